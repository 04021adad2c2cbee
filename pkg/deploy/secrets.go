package deploy

import (
	"context"
	"encoding/base64"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/sshx"
)

// SecretChangeError is a deploy refused before anything changed on the
// host: the release would replace secrets the host's data is bound to
// (deployfiles.DataBound). It names the keys, never a value.
type SecretChangeError struct {
	Target string
	// Keys are the data-bound secrets that differ, sorted.
	Keys []string
	// Rollback is the release a refused rollback would have brought back,
	// "" for a deploy.
	Rollback string
}

func (e *SecretChangeError) Error() string {
	if e.Rollback != "" {
		return fmt.Sprintf("%s: release %s holds other values of the host's %s than the release it runs, which its data and its users' tokens are bound to now; nothing was changed",
			e.Target, e.Rollback, strings.Join(e.Keys, ", "))
	}
	return fmt.Sprintf("%s: the release would replace the host's %s, which its data and its users' tokens are bound to; nothing was changed",
		e.Target, strings.Join(e.Keys, ", "))
}

// CurrentSecrets reads the env files of the host's current release and
// returns the secrets they hold, and the release's id; "" and no secrets
// when the host has no current release. Values stay in memory: nothing
// here prints or logs one.
func (d *Deployer) CurrentSecrets(ctx context.Context) (release string, s deployfiles.DeployedSecrets, err error) {
	release, files, err := d.h.currentEnvFiles(ctx)
	if err != nil || release == "" {
		return release, deployfiles.DeployedSecrets{}, err
	}
	s, err = deployfiles.ReadDeployedSecrets(d.cfg.Name, files)
	if err != nil {
		return "", s, fmt.Errorf("%s: release %s: %w", d.cfg.Name, release, err)
	}
	return release, s, nil
}

// CurrentEnvFiles returns the env files of the host's current release
// (configs/environment/..., by project path) and the release's id; "" and
// none when the host has no current release. They hold secrets: the
// caller keeps them from every log and output.
func (d *Deployer) CurrentEnvFiles(ctx context.Context) (release string, files map[string][]byte, err error) {
	return d.h.currentEnvFiles(ctx)
}

// CheckSecrets compares the secrets of envFiles (a Bundle's) with those of
// the host's current release and refuses, with a *SecretChangeError, to
// replace a data-bound one that rotate does not name. A host without a
// current release accepts anything. It changes nothing on the host.
func (d *Deployer) CheckSecrets(ctx context.Context, envFiles map[string][]byte, rotate []string) error {
	_, err := d.checkSecretsStep(ctx, envFiles, rotate)
	return err
}

// checkSecretsStep is CheckSecrets that also returns the release it held
// the secrets against ("" for none).
func (d *Deployer) checkSecretsStep(ctx context.Context, envFiles map[string][]byte, rotate []string) (string, error) {
	d.emit(StepSecrets, EventStart, "")
	release, msg, err := d.checkSecrets(ctx, envFiles, rotate)
	if err != nil {
		d.emit(StepSecrets, EventFail, err.Error())
		return "", err
	}
	d.emit(StepSecrets, EventOK, msg)
	return release, nil
}

func (d *Deployer) checkSecrets(ctx context.Context, envFiles map[string][]byte, rotate []string) (release, msg string, err error) {
	release, host, err := d.CurrentSecrets(ctx)
	if err != nil {
		return "", "", err
	}
	if release == "" {
		return "", "no current release: nothing to keep", nil
	}
	next, err := deployfiles.ReadDeployedSecrets(d.cfg.Name, envFiles)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", d.cfg.Name, err)
	}
	var refused, rotated []string
	for _, k := range host.Differ(next, d.cfg.OperatorToken) {
		switch {
		case slices.Contains(rotate, k):
			// A rotation without downtime keeps the old value among the
			// previous ones (lucidctl secrets rotate); without, what the
			// old value made stops working at once.
			if _, ok := keyring.PreviousVar[k]; ok {
				if next.Keeps(k, host.Values[k]) {
					k += " (the old value kept in " + keyring.PreviousVar[k] + ")"
				} else {
					k += " (the old value dropped)"
				}
			}
			rotated = append(rotated, k)
		case slices.Contains(deployfiles.DataBound, k):
			refused = append(refused, k)
		}
	}
	// Dropping a previous encryption key the host still has leaves the
	// records it sealed unreadable unless a compaction re-encrypted them:
	// the operator says so with --rotate.
	if dropped := droppedPrevious(host, next, "ENCRYPTION_KEY"); dropped && !slices.Contains(rotate, keyring.EncryptionPrevious) && !slices.Contains(rotate, "ENCRYPTION_KEY") {
		refused = append(refused, keyring.EncryptionPrevious)
	}
	if len(refused) > 0 {
		return "", "", &SecretChangeError{Target: d.cfg.Name, Keys: refused}
	}
	msg = "the data-bound ones are those of release " + release
	if len(rotated) > 0 {
		msg = "those of release " + release + ", but " + strings.Join(rotated, ", ") + " replaced (--rotate)"
	}
	return release, msg + operatorBinding(d.cfg.Name, host, next, d.cfg.OperatorToken), nil
}

// operatorBinding says, for the secrets step, what becomes of the
// operator credentials the services of host (the current release) hold
// when those of next replace them: bound to the target at last, or,
// rolling back to a release rendered before per-host credentials, refused
// by lucidctl until a deploy. "" when neither.
func operatorBinding(target string, host, next deployfiles.DeployedSecrets, token string) string {
	was, will := host.OperatorHashesOf(token), next.OperatorHashesOf(token)
	switch {
	case was.Stale() && will == deployfiles.OperatorHashesBound:
		return "; the services' operator credentials, of a release rendered before per-host ones, are bound to " + target + " from now on"
	case will.Stale():
		return "; but it was rendered before per-host operator credentials: " + target + "'s services will refuse lucidctl's operator commands and figures (maintenance, backup, status) until it is deployed again"
	}
	return ""
}

// checkBound refuses env files whose services' operator credentials are
// not bound to the target (deployfiles.BindOperatorCredentials): the
// rendered files' are the local stack's, and files shipped to two hosts
// as they are would let one host's service replay what the operator sends
// it to the other's. Without the operator token it cannot tell, and lets
// them pass.
func (d *Deployer) checkBound(envFiles map[string][]byte) error {
	if d.cfg.OperatorToken == "" {
		return nil
	}
	next, err := deployfiles.ReadDeployedSecrets(d.cfg.Name, envFiles)
	if err != nil {
		return fmt.Errorf("%s: %w", d.cfg.Name, err)
	}
	if h := next.OperatorHashesOf(d.cfg.OperatorToken); h != deployfiles.OperatorHashesBound && h != deployfiles.OperatorHashesNone {
		return fmt.Errorf("%s: the env files' operator credentials are not the operator token's bound to %s (deployfiles.BindOperatorCredentials); nothing was changed", d.cfg.Name, d.cfg.Name)
	}
	return nil
}

// droppedPrevious reports whether a previous value of secret that host
// holds is neither among next's previous values nor next's current value.
func droppedPrevious(host, next deployfiles.DeployedSecrets, secret string) bool {
	had, err := keyring.Parse(host.Previous[keyring.PreviousVar[secret]])
	if err != nil {
		return false
	}
	for _, e := range had {
		if string(e.Value) != next.Values[secret] && !next.Keeps(secret, string(e.Value)) {
			return true
		}
	}
	return false
}

// currentEnvFiles returns the current release's id and its env files
// (those under configs/environment), by project path; "" when the host
// has no current release.
func (h *host) currentEnvFiles(ctx context.Context) (string, map[string][]byte, error) {
	return h.envFilesAt(ctx, h.currentLink(), "the current release")
}

// releaseEnvFiles returns release id's env files, as currentEnvFiles.
func (h *host) releaseEnvFiles(ctx context.Context, id string) (map[string][]byte, error) {
	_, files, err := h.envFilesAt(ctx, h.releaseDir(id), "release "+id)
	return files, err
}

// envFilesAt reads the env files of the release link names (a symlink to
// it, or its directory): its id and the files, none when link is not
// there. A file that cannot be read (a failing card) fails the read
// rather than come back empty: a backup would hold it so, and lose the
// keys in it.
func (h *host) envFilesAt(ctx context.Context, link, what string) (string, map[string][]byte, error) {
	envDir := path.Dir(deployfiles.EnvPath)
	script := fmt.Sprintf(`cur=%s; [ -L "$cur" ] || [ -d "$cur" ] || exit 0; if [ -L "$cur" ]; then readlink "$cur"; else echo "$cur"; fi; cd "$cur"/%s 2>/dev/null || exit 0; for f in * .env*; do [ -f "$f" ] || continue; printf '%%s\n' "$f"; base64 -w0 "$f" || { printf '%%s cannot be read\n' "$f" >&2; exit 1; }; echo; done`,
		sshx.Quote(link), sshx.Quote(envDir))
	out, err := h.ssh.Run(ctx, script, nil)
	if err != nil {
		return "", nil, fmt.Errorf("%s: read %s's env files: %w", h.name, what, err)
	}
	lines := strings.Split(string(out), "\n")
	release := path.Base(strings.TrimSpace(lines[0]))
	if strings.TrimSpace(lines[0]) == "" {
		return "", nil, nil
	}
	files := map[string][]byte{}
	for i := 1; i+1 < len(lines); i += 2 {
		name := lines[i]
		data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(lines[i+1]))
		if err != nil {
			return "", nil, fmt.Errorf("%s: release %s: read %s/%s: %w", h.name, release, envDir, name, err)
		}
		files[envDir+"/"+name] = data
	}
	return release, files, nil
}
