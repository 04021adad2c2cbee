// Package backup implements `lucidctl backup` and `lucidctl backup list`:
// an online, consistent, incremental, age-encrypted backup of a deployed
// host or of the local stack into a repository on the operator's machine
// (pkg/backup), through the services' snapshot endpoints
// (pkg/api/snapshotapi), reached as maintenance reaches them
// (cmd/lucidctl/internal/hostservices).
package backup

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// Services are the stateful services a backup copies, in the order their
// copies are taken: each before the services it follows, the engine last.
// What a service's copy knows of another's state then lies in that
// other's copy, taken later: every anchor anchoring holds as sealed, every
// block the block manager indexed, is in the engine's copy, and every
// anchor a data chain session was sealed with is in anchoring's. The other
// order would restore anchors marked sealed at heights the restored chain
// lacks, never sent again, and a block index ahead of its chain.
var Services = []string{"datachain", "anchoring", "blocks", "engine", "mesh"}

// Options are the inputs of `lucidctl backup`.
type Options struct {
	Env *cli.Env
	// To is the repository ("": backup.dir of lucid.yaml).
	To string
	// Fleet chooses the target; none: the local stack.
	Fleet fleet.Flags
	// PortOffset is the stack's --port-offset; nil: local.port_offset of
	// lucid.yaml for the local stack, 0 for a target.
	PortOffset *int
	// EnvFile holds the operator's tokens ("": local.env_file); for the
	// local stack it is also the env file backed up.
	EnvFile string
	// Plaintext allows a backup without recipients.
	Plaintext bool
	// Parallel is how many pieces are fetched at once.
	Parallel int
}

// NewCmd returns `lucidctl backup` with its list subcommand.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "backup [--target NAME] [--to DIR]",
		Short: "Back up a host's (or the local stack's) chain, data chain, mesh CA and secrets",
		Long: `Take an online, consistent backup of the stateful services (engine,
anchoring, blocks, datachain, mesh) and the host's env files into the
repository DIR on this machine, while the services keep serving.

Each service takes a consistent copy of its state; lucidctl fetches only the
1 MiB pieces the repository does not hold yet (sealed pack files and old
blocks are not sent again), encrypts each with age for backup.recipients of
lucid.yaml, and writes the backup's manifest last: a backup killed halfway
leaves earlier ones intact and is listed as partial; its pieces serve the
next one. The services' copies are deleted at the end.

With --target the host is reached through SSH as maintenance reaches it
(LUCID_OPERATOR_TOKEN, services verified by their mesh certificates), and the
env files are those of its current release; the backup is recorded in the
host's audit log. Without it, the local stack of lucidctl up and its env
file are backed up.

A backup always holds secrets: without backup.recipients it is refused
unless --plaintext is given. Progress goes to stderr, the result to stdout.`,
		Example: `  lucidctl backup --target pi --to /srv/lucid-backups
  lucidctl backup                     # the local stack, into backup.dir of lucid.yaml
  lucidctl backup list --to /srv/lucid-backups
  lucidctl backup verify --to /srv/lucid-backups`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("port-offset") {
				opts.PortOffset = &offset
			}
			return run(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	opts.Fleet.Add(fs, "the target of lucid.yaml to back up (default: the local stack)")
	_ = fs.MarkHidden("docker-socket")
	_ = fs.MarkHidden("skip-unreachable")
	fs.StringVar(&opts.To, "to", "", "the backup repository (default: backup.dir of lucid.yaml)")
	fs.IntVar(&offset, "port-offset", 0, "the stack's --port-offset (default: local.port_offset for the local stack, 0 for a target)")
	fs.StringVar(&opts.EnvFile, "env-file", "", "the operator's env file, with LUCID_OPERATOR_TOKEN (default: local.env_file of lucid.yaml)")
	fs.BoolVar(&opts.Plaintext, "plaintext", false, "write an unencrypted backup (it holds every secret of the host)")
	fs.IntVar(&opts.Parallel, "parallel", 4, "pieces fetched at once")
	cmd.AddCommand(newListCmd(env), newVerifyCmd(env))
	return cli.SupportsJSON(cmd)
}

// Output is `lucidctl backup --json`.
type Output struct {
	ID         string `json:"id"`
	Repository string `json:"repository"`
	Encrypted  bool   `json:"encrypted"`
	// Target is the lucid.yaml target, or "local".
	Target string `json:"target"`
	Host   string `json:"host"`
	// Services are the services copied, in order, with their facts.
	Services []ServiceOutput `json:"services"`
	// Chain and DataChain repeat the engine's and the data chain's facts.
	Chain     *snapshotapi.ChainFacts     `json:"chain,omitempty"`
	DataChain *snapshotapi.DataChainFacts `json:"datachain,omitempty"`
	// EnvFiles name the env files backed up (never their contents).
	EnvFiles   []string      `json:"env_files"`
	Totals     backup.Totals `json:"totals"`
	DurationMS int64         `json:"duration_ms"`
	// Signer is the public key the manifest is signed with
	// (backup.signers of lucid.yaml pins it).
	Signer string `json:"signer"`
}

// ServiceOutput is one service's copy.
type ServiceOutput struct {
	Name  string            `json:"name"`
	Files int               `json:"files"`
	Bytes int64             `json:"bytes"`
	Facts snapshotapi.Facts `json:"facts"`
}

func run(ctx context.Context, opts *Options) error {
	start := time.Now()
	env := opts.Env
	cfg, err := env.Config()
	if err != nil {
		return err
	}
	dir, err := repoDir(cfg, "--to", opts.To)
	if err != nil {
		return err
	}
	recipients, err := readRecipients(cfg, opts.Plaintext)
	if err != nil {
		return err
	}
	if opts.Parallel < 1 {
		return cli.Usage(fmt.Errorf("--parallel %d: at least 1", opts.Parallel))
	}
	repo, err := backup.InitRepository(ctx, dir, len(recipients) > 0)
	if errors.Is(err, backup.ErrMixed) {
		hint := "keep this repository plaintext (--plaintext, no backup.recipients), or back up into another directory"
		if len(recipients) == 0 {
			hint = "set backup.recipients in lucid.yaml to this repository's, or back up into another directory"
		}
		return cli.Usage(cli.WithHint(err, hint))
	}
	if err != nil {
		return err
	}
	creds, err := hostservices.ReadCredentials(env, opts.EnvFile)
	if err != nil {
		return err
	}
	progress := iostreams.NewProgress(env.IO.ErrOut)
	if opts.Fleet.Target == "" {
		offset := cfg.Local.PortOffset
		if opts.PortOffset != nil {
			offset = *opts.PortOffset
		}
		host, _ := os.Hostname()
		s := &hostservices.Session{Host: cfg.Local.Name, Dial: dialLocal, Offset: offset, Creds: creds, Say: progress.Sayer("")}
		defer s.Close()
		envPath := opts.EnvFile
		if envPath == "" {
			envPath = cfg.Abs(cfg.Local.EnvFile)
		}
		files, err := localEnvFiles(envPath)
		if err != nil {
			return err
		}
		out, err := take(ctx, opts, repo, recipients, s, auth.LocalHost, host, files)
		if err != nil {
			return s.Classify(ctx, err)
		}
		out.DurationMS = time.Since(start).Milliseconds()
		return printOutput(env, out)
	}

	if _, err := opts.Fleet.One(cfg, "a backup is of one host: back up each on its own"); err != nil {
		return err
	}
	fl, err := opts.Fleet.Connect(ctx, env)
	if err != nil {
		return err
	}
	defer fl.Close()
	h := fl.Hosts[0]
	offset := 0
	if opts.PortOffset != nil {
		offset = *opts.PortOffset
	}
	s := &hostservices.Session{Host: h.Name, Dial: h.SSH.DialTCP, Offset: offset, Creds: creds, Say: progress.Sayer(h.Name + ": "),
		Deployed: hostservices.DeployedOf(h.DeployConfig())}
	defer s.Close()
	out, err := func() (*Output, error) {
		d, err := deploy.New(h.DeployConfig())
		if err != nil {
			return nil, err
		}
		defer func() { _ = d.Close() }()
		release, files, err := d.CurrentEnvFiles(ctx)
		if err != nil {
			return nil, err
		}
		if release == "" {
			return nil, fmt.Errorf("%s has no current release: there is nothing deployed to back up", h.Name)
		}
		if err := wholeEnvFiles(h.Name, release, files); err != nil {
			return nil, err
		}
		s.Say("release %s: %d env file(s)", release, len(files))
		var env []backup.EnvFile
		for _, p := range slices.Sorted(maps.Keys(files)) {
			env = append(env, backup.EnvFile{Name: p, Mode: 0o600, Data: files[p]})
		}
		return take(ctx, opts, repo, recipients, s, h.Name, h.Target.Host, env)
	}()
	err = s.Classify(ctx, err)
	if aerr := record(ctx, h, out, err); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if out == nil {
		return err
	}
	out.DurationMS = time.Since(start).Milliseconds()
	if perr := printOutput(env, out); perr != nil {
		return perr
	}
	return err
}

// wholeEnvFiles refuses a release's env files that a restore could not
// bring back the keys of: none at all (the release's env folder gone), or
// one empty (render writes none so). A backup without them would be
// taken, signed and listed as the newest all the same.
func wholeEnvFiles(target, release string, files map[string][]byte) error {
	if len(files) == 0 {
		return fmt.Errorf("%s: release %s holds no env files: a backup without them could not restore the keys its data is read with; nothing was backed up (deploy again, then back up)", target, release)
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if len(files[p]) == 0 {
			return fmt.Errorf("%s: release %s's %s is empty: a backup with it could not restore the keys its data is read with; nothing was backed up (deploy again, then back up)", target, release, p)
		}
	}
	return nil
}

// take backs up the services of s and env files into repo.
func take(ctx context.Context, opts *Options, repo *backup.Repository, recipients []age.Recipient, s *hostservices.Session, target, host string, env []backup.EnvFile) (*Output, error) {
	signer, err := backup.SigningKey(s.Creds.Operator)
	if err != nil {
		return nil, err
	}
	var srcs []backup.Snapshotter
	for _, name := range Services {
		hc, base, err := s.Client(ctx, name, 0) // as long as the copy takes: ctx ends it
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, &named{Client: snapshotapi.New(base, hc), service: name})
	}
	var last time.Time
	var lastService string
	progress := func(p backup.Progress) {
		// Every few seconds, and at each service's end.
		if p.PiecesDone != p.PiecesTotal && p.Service == lastService && time.Since(last) < 2*time.Second {
			return
		}
		last, lastService = time.Now(), p.Service
		s.Say("%s: %d/%d pieces, %s sent", p.Service, p.PiecesDone, p.PiecesTotal, iostreams.Bytes(p.BytesSent))
	}
	s.Say("backing up into %s (%s)", repo.Dir(), kind(repo))
	m, err := repo.Backup(ctx, backup.BeginOptions{
		Target: target, Host: host, Version: buildinfo.Read().String(),
		Recipients: recipients, Parallel: opts.Parallel, Progress: progress, Signer: signer,
	}, srcs, env, backup.Events{
		Taken: func(m *snapshotapi.Manifest) {
			s.Say("%s: copy %s taken: %d file(s), %s", m.Service, m.ID, len(m.Files), iostreams.Bytes(filesBytes(m.Files)))
		},
		DropFailed: func(service string, err error) {
			s.Say("warning: %s: the copy was not deleted (the service deletes it within %s): %v", service, snapshotapi.MaxAge, err)
		},
	})
	if err != nil {
		return nil, err
	}
	out := &Output{ID: m.ID, Repository: repo.Dir(), Encrypted: repo.Encrypted(), Target: m.Target, Host: m.Host, Totals: m.Totals, Signer: backup.SignerOf(signer)}
	for _, sm := range m.Services {
		out.Services = append(out.Services, ServiceOutput{Name: sm.Service, Files: len(sm.Files), Bytes: filesBytes(sm.Files), Facts: sm.Facts})
		if sm.Facts.Chain != nil {
			out.Chain = sm.Facts.Chain
		}
		if sm.Facts.DataChain != nil {
			out.DataChain = sm.Facts.DataChain
		}
	}
	out.EnvFiles = []string{}
	for _, f := range m.Env {
		out.EnvFiles = append(out.EnvFiles, f.Path)
	}
	return out, nil
}

// named says which service an error of the snapshot client is about, and
// that a service without snapshots is too old.
type named struct {
	*snapshotapi.Client
	service string
}

func (n *named) Take(ctx context.Context) (*snapshotapi.Manifest, error) {
	m, err := n.Client.Take(ctx)
	if errors.Is(err, api.ErrNotFound) {
		return nil, cli.WithHint(fmt.Errorf("%s: %w", n.service, err), "the service does not serve snapshots: deploy a lucid version with online backups")
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.service, err)
	}
	return m, nil
}

func printOutput(env *cli.Env, out *Output) error {
	if env.JSON {
		return env.PrintJSON(out)
	}
	w := env.IO.Out
	fmt.Fprintf(w, "backup %s of %s (%s) in %s, %s\n", out.ID, out.Target, out.Host, out.Repository, map[bool]string{true: "encrypted", false: "plaintext"}[out.Encrypted])
	names := make([]string, 0, len(out.Services))
	for _, s := range out.Services {
		names = append(names, s.Name)
	}
	fmt.Fprintf(w, "  services:  %s; env files: %d\n", strings.Join(names, ", "), len(out.EnvFiles))
	if c := out.Chain; c != nil {
		fmt.Fprintf(w, "  chain:     %s height %d, root %s\n", c.ChainID, c.Height, c.Root)
	}
	if d := out.DataChain; d != nil {
		fmt.Fprintf(w, "  datachain: %d chunk(s), %d session(s) (%d sealed), %d pack(s) of %s\n", d.Chunks, d.Sessions, d.SealedSessions, d.Packs, iostreams.Bytes(d.PackBytes))
	}
	t := out.Totals
	pct := 0.0
	if t.Bytes > 0 {
		pct = 100 * float64(t.BytesSent) / float64(t.Bytes)
	}
	fmt.Fprintf(w, "  bytes:     %s in %d file(s), %s sent (%.1f%%); pieces: %d new, %d already backed up\n",
		iostreams.Bytes(t.Bytes), t.Files, iostreams.Bytes(t.BytesSent), pct, t.PiecesNew, t.PiecesReused)
	fmt.Fprintf(w, "  took:      %s\n", (time.Duration(out.DurationMS) * time.Millisecond).String())
	fmt.Fprintf(w, "  signed by: %s\n", out.Signer)
	return nil
}

// OpenRepository opens the existing backup repository that flag (--to,
// --from) names in value, else backup.dir of lucid.yaml. None named, or a
// directory that is not one, is a usage error. Restore opens it so too.
func OpenRepository(ctx context.Context, cfg *projectconfig.Config, flag, value string) (*backup.Repository, string, error) {
	dir, err := repoDir(cfg, flag, value)
	if err != nil {
		return nil, "", err
	}
	repo, err := backup.OpenRepository(ctx, dir)
	if errors.Is(err, backup.ErrNotRepository) {
		return nil, "", cli.Usage(err)
	}
	return repo, dir, err
}

// TrustSigners makes repo take only backups signed by a key of
// backup.signers in lucid.yaml, or by the one derived from operatorToken
// (the key lucidctl backup signs with). With neither, a read is refused
// unless allowUnsigned: anyone who can write to the backup disk could
// otherwise put a backup of their own there. With allowUnsigned every
// backup is taken, but the newest is still the newest those keys signed
// when there is one (backup.Repository.Prefer).
func TrustSigners(repo *backup.Repository, cfg *projectconfig.Config, operatorToken string, allowUnsigned bool) error {
	keys, err := trustedKeys(cfg, operatorToken)
	if err != nil {
		return err
	}
	switch {
	case allowUnsigned:
		repo.Prefer(keys) // every backup, signed or not
		return nil
	case len(keys) == 0:
		return cli.Usage(cli.WithHint(errors.New("no key to check the backups' signatures with: backup.signers of lucid.yaml is empty and the operator token is not at hand"),
			"pin the key lucidctl backup printed (signed by: ...) in backup.signers of lucid.yaml, or give the operator's env file (--env-file); --allow-unsigned takes a backup nobody signed"))
	}
	repo.Trust(keys)
	return nil
}

// trustedKeys are the keys of backup.signers and the one derived from
// operatorToken, when given. A malformed signer is a usage error, returned
// with the keys that are not.
func trustedKeys(cfg *projectconfig.Config, operatorToken string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	var bad error
	for _, s := range cfg.Backup.Signers {
		k, err := backup.ParseSigner(s)
		if err != nil {
			bad = cmp.Or(bad, cli.Usage(fmt.Errorf("backup.signers: %q: %w", s, err)))
			continue
		}
		keys = append(keys, k)
	}
	if operatorToken != "" {
		k, err := backup.SigningKey(operatorToken)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k.Public().(ed25519.PublicKey))
	}
	return keys, bad
}

// OperatorToken is LUCID_OPERATOR_TOKEN from the environment, else from
// the env file at path ("": local.env_file), or "": a restore onto a new
// machine may have neither, and backup.signers then says whom to trust.
func OperatorToken(env *cli.Env, path string) string {
	vals, err := env.OperatorEnv(path)
	if err != nil {
		return ""
	}
	tok, _ := vals.Value("LUCID_OPERATOR_TOKEN")
	return tok
}

// ExplainUnsigned adds what to do to an unsigned backup's error.
func ExplainUnsigned(err error) error {
	if errors.Is(err, backup.ErrUnsigned) {
		return cli.Problems(cli.WithHint(err, "a backup no trusted key signed may be someone else's (anyone who can write to the backup disk): if it is yours, taken before backups were signed or with an operator token rotated since, pin its key in backup.signers, or pass --allow-unsigned"))
	}
	return err
}

// repoDir is the repository that flag names in value, else backup.dir.
func repoDir(cfg *projectconfig.Config, flag, value string) (string, error) {
	if value != "" {
		return value, nil
	}
	if cfg.Backup.Dir != "" {
		return cfg.Abs(cfg.Backup.Dir), nil
	}
	return "", cli.Usage(fmt.Errorf("%s DIR is required: the backup repository (or set backup.dir in lucid.yaml)", flag))
}

// readRecipients are backup.recipients of lucid.yaml; none only with
// plaintext.
func readRecipients(cfg *projectconfig.Config, plaintext bool) ([]age.Recipient, error) {
	if plaintext {
		if len(cfg.Backup.Recipients) > 0 {
			return nil, cli.Usage(errors.New("--plaintext, but backup.recipients of lucid.yaml are set: refusing to write secrets unencrypted that lucid.yaml says to encrypt"))
		}
		return nil, nil
	}
	if len(cfg.Backup.Recipients) == 0 {
		return nil, cli.Usage(cli.WithHint(
			errors.New("no backup.recipients in lucid.yaml: a backup holds every secret of the host, and is encrypted for those recipients"),
			"add an age public key (age-keygen) or an ssh-ed25519 key under backup.recipients, or pass --plaintext to write it unencrypted"))
	}
	var out []age.Recipient
	for i, s := range cfg.Backup.Recipients {
		r, err := backup.ParseRecipient(s)
		if err != nil {
			return nil, cli.Usage(fmt.Errorf("backup.recipients[%d]: %w", i, err))
		}
		out = append(out, r)
	}
	return out, nil
}

// localEnvFiles is the local stack's env file.
func localEnvFiles(p string) ([]backup.EnvFile, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, cli.WithHint(fmt.Errorf("the local stack's env file %s does not exist", p), "lucidctl up writes it; --env-file names another")
	}
	if err != nil {
		return nil, err
	}
	return []backup.EnvFile{{Name: path.Base(strings.ReplaceAll(p, "\\", "/")), Mode: 0o600, Data: b}}, nil
}

func dialLocal(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, 10*time.Second)
}

// record writes the backup into the host's audit trail: its id, or the
// error.
func record(ctx context.Context, h *fleet.Host, out *Output, err error) error {
	d, derr := deploy.New(h.DeployConfig())
	if derr != nil {
		return fmt.Errorf("audit trail: %w", derr)
	}
	defer func() { _ = d.Close() }()
	e := deploy.AuditEntry{Action: deploy.AuditBackup}
	if out != nil {
		e.Args = []string{out.ID}
	}
	if err != nil {
		e.Error = err.Error()
	}
	return d.Audit(ctx, e)
}

func kind(r *backup.Repository) string {
	if r.Encrypted() {
		return "encrypted"
	}
	return "plaintext"
}

func filesBytes(fs []snapshotapi.File) int64 {
	var n int64
	for _, f := range fs {
		n += f.Size
	}
	return n
}
