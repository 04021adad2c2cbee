package cli

import (
	"errors"
	"io/fs"

	"github.com/pickme/lucid/pkg/envfile"
)

// OperatorEnv is where commands find the operator's values (secrets, the
// mesh URL): the environment first, then the operator's env file.
type OperatorEnv struct {
	env *Env
	// Path is the env file's path.
	Path string
	vars map[string]string
}

// OperatorEnv reads the env file at path, or local.env_file of lucid.yaml
// when path is "". A file that does not exist has no values.
func (e *Env) OperatorEnv(path string) (*OperatorEnv, error) {
	if path == "" {
		cfg, err := e.Config()
		if err != nil {
			return nil, err
		}
		path = cfg.Abs(cfg.Local.EnvFile)
	}
	vars, err := envfile.Read(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		vars = map[string]string{}
	case err != nil:
		return nil, err
	}
	return &OperatorEnv{env: e, Path: path, vars: vars}, nil
}

// Value is key's value and where it came from ("the environment" or the
// file's path, never the value itself, for messages); "" when neither has
// it.
func (o *OperatorEnv) Value(key string) (value, source string) {
	if v := o.env.Getenv(key); v != "" {
		return v, "the environment"
	}
	return o.vars[key], o.Path
}

// OperatorToken is LUCID_OPERATOR_TOKEN from the environment, else from
// the operator's env file; "" when neither has it, or when the file cannot
// be read, which is logged as a warning ending in without (what the
// command does without the token).
func (e *Env) OperatorToken(without string) string {
	vals, err := e.OperatorEnv("")
	if err != nil {
		e.Logger.Warn("the operator's env file could not be read; "+without, "error", err)
		return ""
	}
	token, _ := vals.Value("LUCID_OPERATOR_TOKEN")
	return token
}
