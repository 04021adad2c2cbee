// Package restore implements `lucidctl restore`: a backup's data back into
// the stateful services of a deployed host (each service's volume written
// by a one-shot `lucid data restore` container of its own image, through
// the host's Docker Engine over SSH) or of the local stack (its data
// directories written in-process), with the engine fenced so that it
// signs no block until the operator lifts the fence; then the checks that
// the restore holds what was backed up: the chain's audit, a data-chain
// scrub, the backup's figures, and receipts issued before the backup.
package restore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	backupcmd "github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/maintenance"
	"github.com/pickme/lucid/cmd/lucidctl/internal/stack"
	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/logtree"
	"github.com/pickme/lucid/pkg/restoredata"
)

// Options are the inputs of `lucidctl restore`.
type Options struct {
	Env   *cli.Env
	Fleet fleet.Flags
	// From is the backup repository (or backup directory); Backup the
	// backup's id in it ("" for the newest, or the only one).
	From, Backup string
	// Identity decrypts the repository ("": backup.identity of lucid.yaml).
	Identity string
	// Yes answers the confirmations: replacing data a host or the local
	// stack holds, and stopping a running local stack.
	Yes bool
	// WriteEnv writes the backup's env files where they differ from the
	// deployed ones.
	WriteEnv bool
	// Receipts are receipt files issued before the backup, to check.
	Receipts []string
	// VerifyOnly checks a restored stack without restoring.
	VerifyOnly bool
	// PortOffset is the local stack's (nil: local.port_offset), or the
	// one a target's stack was rendered with.
	PortOffset *int
	// EnvFile holds the operator's tokens ("": local.env_file).
	EnvFile string
	// AllowUnsigned restores a backup no trusted key signed.
	AllowUnsigned bool
	HealthTimeout time.Duration
	LockWait      time.Duration
	// DownTimeout bounds stopping a running local stack.
	DownTimeout time.Duration
	// Now is the clock of the fence (default time.Now).
	Now func() time.Time
}

// Output is `lucidctl restore --json`.
type Output struct {
	Backup string `json:"backup"`
	// Target is the host's name, or "local".
	Target  string `json:"target"`
	Release string `json:"release,omitempty"`
	// Existing says the restore replaced data (it needed confirmation);
	// Reasons say what data.
	Existing bool     `json:"existing"`
	Reasons  []string `json:"reasons,omitempty"`
	// Services are what each service's data directory received.
	Services map[string]*restoredata.Result `json:"services"`
	// Fence is what was written into the engine's data directory.
	Fence *engineapi.Fence `json:"fence,omitempty"`
	// EnvDiffer are the deployed env files that differ from the backup's
	// (paths only); EnvWritten those --env wrote back.
	EnvDiffer  []string `json:"env_differ"`
	EnvWritten []string `json:"env_written"`
	// Verification is what the checks after the restore found (nil for a
	// local restore, whose stack is started afterwards).
	Verification *Verification `json:"verification,omitempty"`
	AuditError   string        `json:"audit_error,omitempty"`
}

// NewCmd returns the restore command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env, Now: time.Now}
	var offset int
	cmd := &cobra.Command{
		Use:   "restore --from DIR [--backup ID] [--target TARGET] [--receipt FILE]...",
		Short: "Restore a backup onto a deployed host or the local stack, fence the engine, and verify",
		Long: `Restore the stateful services' data (engine, anchoring, block manager, data
chain, mesh) of a backup.

With --target, onto a deployed host (one at a time), under its deploy lock:
the host must run a release (a new SD card: deploy first, then restore). The
services are stopped, each service's volume is written by a one-shot
container of the service's own image running ` + "`lucid data restore`" + `, as
the services' user and without network, which checks every file against
the backup's SHA-256 before it replaces anything; the engine's data gets a
restore fence (` + engineapi.FenceFile + `) so that it produces no block until
the operator lifts it (lucidctl maintenance fence lift). Then the services
start again behind the health gate, and the checks run: the block manager's
audit of the whole chain, a data-chain scrub, the chain and data-chain
figures against the backup's, and each --receipt (verified offline with the
restored validator key, and its block held against the restored chain).

Without --target, onto the local stack (lucidctl up) at --port-offset: it
must be down (a running stack is stopped after confirmation, as lucidctl down
does); its data directories are replaced in-process, the engine fenced.
Start it with lucidctl up -d, then check it with --verify-only.

A host or a local stack that holds data (the chain holds transactions, the
data chain holds chunks, or a data directory is not empty) is replaced only
after confirmation: --yes, or a prompt on a terminal; otherwise exit 2.

The deployed env files are compared with the backup's (names only, never
values): they are written back only with --env, and a difference is warned
about otherwise (restored data encrypted with the backup's ENCRYPTION_KEY
needs it). The restore is recorded in the host's audit log.

Exits 3 when a check fails.`,
		Example: `  lucidctl restore --target pi --from /backups/lucid --receipt anchor.tlog-proof
  lucidctl restore --target pi --from /backups/lucid --backup 20261205T120000Z --yes --env
  lucidctl restore --from /backups/lucid --port-offset 1000 && lucidctl up -d --port-offset 1000
  lucidctl restore --from /backups/lucid --verify-only --receipt anchor.tlog-proof`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("port-offset") {
				opts.PortOffset = &offset
			}
			if opts.WriteEnv && opts.Fleet.Target == "" {
				return cli.Usage(errors.New("--env writes a deployed host's env files: it needs --target (the local stack reads the operator's env file)"))
			}
			return run(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target of lucid.yaml to restore onto (default: the local stack)")
	_ = cmd.Flags().MarkHidden("skip-unreachable") // one host, which must answer
	cmd.Flags().StringVar(&opts.From, "from", "", "the backup repository (default: backup.dir of lucid.yaml)")
	cmd.Flags().StringVar(&opts.Backup, "backup", "", "the backup's id (default: the newest)")
	cmd.Flags().StringVar(&opts.Identity, "backup-identity", "", "the age identity file or SSH private key that decrypts the repository (default: backup.identity of lucid.yaml; --identity is the SSH key)")
	cmd.Flags().BoolVarP(&opts.Yes, "yes", "y", false, "replace existing data, and stop a running local stack, without asking")
	cmd.Flags().BoolVar(&opts.WriteEnv, "env", false, "write the backup's env files where they differ from the deployed ones")
	cmd.Flags().StringArrayVar(&opts.Receipts, "receipt", nil, "a receipt issued before the backup, to check against the restored chain (repeatable)")
	cmd.Flags().BoolVar(&opts.VerifyOnly, "verify-only", false, "only run the checks against the running stack")
	cmd.Flags().IntVar(&offset, "port-offset", 0, "the local stack's port offset (default: local.port_offset), or the one the target's stack was rendered with")
	cmd.Flags().StringVar(&opts.EnvFile, "env-file", "", "the operator's env file, with LUCID_OPERATOR_TOKEN (default: local.env_file of lucid.yaml)")
	cmd.Flags().BoolVar(&opts.AllowUnsigned, "allow-unsigned", false, "restore a backup that no key of backup.signers (nor the operator token's) signed: one taken before backups were signed, or not yours")
	cmd.Flags().DurationVar(&opts.HealthTimeout, "health-timeout", 3*time.Minute, "how long the services get to become healthy")
	cmd.Flags().DurationVar(&opts.LockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	cmd.Flags().DurationVar(&opts.DownTimeout, "down-timeout", 2*time.Minute, "how long a running local stack gets to stop")
	return cli.SupportsJSON(cmd)
}

func run(ctx context.Context, opts *Options) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	onto := auth.LocalHost
	if opts.Fleet.Target != "" {
		if onto, err = opts.Fleet.One(cfg, "restore one host at a time"); err != nil {
			return err
		}
	}
	src, from, err := OpenSource(ctx, cfg, opts.From, opts.Backup, opts.Identity, onto,
		Trust{OperatorToken: backupcmd.OperatorToken(opts.Env, opts.EnvFile), AllowUnsigned: opts.AllowUnsigned},
		func(msg string) { fmt.Fprintln(opts.Env.IO.ErrOut, "note: "+msg) })
	if err != nil {
		return err
	}
	opts.From = from
	for _, m := range src.Services() {
		if _, ok := catalog.Lookup(m.Service); !ok {
			return fmt.Errorf("backup %s holds service %q, which this lucidctl does not know", src.ID(), m.Service)
		}
	}
	// Every piece is read and checked before anything is stopped or
	// written: a damaged piece found halfway would leave some services'
	// data restored and the others' not.
	if v, ok := src.(interface{ Verify(context.Context) error }); ok && !opts.VerifyOnly {
		fmt.Fprintf(opts.Env.IO.ErrOut, "checking every piece of backup %s before anything is stopped\n", src.ID())
		if err := v.Verify(ctx); err != nil {
			return cli.Problems(cli.WithHint(fmt.Errorf("%w; nothing was stopped or written", err), "lucidctl backup verify names the damaged pieces; restore another backup (--backup ID), or take a new one"))
		}
	}
	out := &Output{Backup: src.ID(), Target: "local", Services: map[string]*restoredata.Result{}, EnvDiffer: []string{}, EnvWritten: []string{}}
	var runErr error
	if opts.Fleet.Target != "" {
		runErr = runTarget(ctx, opts, src, out)
	} else {
		runErr = runLocal(ctx, opts, src, out)
	}
	if out.Verification != nil && !out.Verification.OK && runErr == nil {
		runErr = cli.Problems(errors.New("the restored stack failed a check: " + failed(out.Verification)))
	}
	if opts.Env.JSON {
		if perr := opts.Env.PrintJSON(out); perr != nil {
			return errors.Join(runErr, perr)
		}
		return runErr
	}
	printOutput(opts.Env, opts, out)
	return runErr
}

func failed(v *Verification) string {
	var names []string
	for _, c := range v.Checks {
		if !c.OK {
			names = append(names, c.Name)
		}
	}
	return strings.Join(slices.Compact(names), ", ")
}

func printOutput(env *cli.Env, opts *Options, out *Output) {
	w := env.IO.Out
	for _, s := range catalog.Names() {
		if r := out.Services[s]; r != nil {
			fmt.Fprintf(w, "%s: %s restored: %d files, %d bytes\n", out.Target, s, r.Files, r.Bytes)
		}
	}
	if out.Fence != nil {
		fmt.Fprintf(w, "%s: engine fenced at height %d (backup %s): it produces no block until `lucidctl maintenance fence lift`\n", out.Target, out.Fence.RestoredHeight, out.Fence.Backup)
	}
	if len(out.EnvWritten) > 0 {
		fmt.Fprintf(w, "%s: env files written: %s\n", out.Target, strings.Join(out.EnvWritten, ", "))
	}
	if v := out.Verification; v != nil {
		st := env.IO.OutStyles()
		for _, c := range v.Checks {
			mark := st.Success.Render("OK  ")
			if !c.OK {
				mark = st.Error.Render("FAIL")
			}
			fmt.Fprintf(w, "%s %-16s %s\n", mark, c.Name, c.Detail)
		}
	}
	if out.Target == "local" && !opts.VerifyOnly && len(out.Services) > 0 {
		off := ""
		if opts.PortOffset != nil {
			off = fmt.Sprintf(" --port-offset %d", *opts.PortOffset)
		}
		fmt.Fprintf(env.IO.ErrOut, "start the stack with `lucidctl up -d%s`, then check it: `lucidctl restore --verify-only --from %s%s`\n", off, opts.From, off)
	}
}

// confirm asks the operator to agree to what reasons say, unless --yes.
// Without a terminal to ask on, it is a usage error naming --yes.
func confirm(env *cli.Env, yes bool, what string, reasons []string) error {
	if yes || len(reasons) == 0 {
		return nil
	}
	question := what + ": " + strings.Join(reasons, "; ")
	f, ok := env.IO.In.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || !env.IO.IsStderrTTY() {
		return cli.Usage(fmt.Errorf("%s; pass --yes to go ahead", question))
	}
	fmt.Fprintf(env.IO.ErrOut, "%s\nGo ahead? [y/N] ", question)
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
		return cli.Usage(errors.New("not confirmed; nothing changed"))
	}
	return nil
}

// fence is the restore fence of src, and its bytes; nil when the backup
// holds no engine data.
func fence(src Source, now time.Time) (*engineapi.Fence, []byte, error) {
	facts := backupFacts(src)
	if !slices.ContainsFunc(src.Services(), func(m snapshotapi.Manifest) bool { return m.Service == "engine" }) {
		return nil, nil, nil
	}
	f := &engineapi.Fence{Reason: "restored", Backup: src.ID(), At: now.UTC()}
	if facts.Chain != nil {
		f.RestoredHeight = facts.Chain.Height
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	return f, append(b, '\n'), nil
}

// serviceData is each service's data of src, in the catalog's order, the
// engine's with the fence added.
func serviceData(src Source, fenceBytes []byte) []deploy.ServiceData {
	var out []deploy.ServiceData
	for _, name := range catalog.Names() {
		i := slices.IndexFunc(src.Services(), func(m snapshotapi.Manifest) bool { return m.Service == name })
		if i < 0 {
			continue
		}
		m := src.Services()[i]
		man := restoredata.Manifest{Service: name}
		for _, f := range m.Files {
			// A backup of a fenced engine holds its old fence: this
			// restore's replaces it.
			if name == "engine" && f.Path == engineapi.FenceFile {
				continue
			}
			// The restore checks a file whole (size, SHA-256); its
			// pieces' hashes were for the backup, and a data chain of
			// a few hundred GiB has so many that the manifest would
			// pass the restore stream's bound.
			f.Pieces = nil
			man.Files = append(man.Files, f)
		}
		if name == "engine" && fenceBytes != nil {
			man.Files = append(man.Files, restoredata.FileOf(engineapi.FenceFile, fenceBytes))
		}
		out = append(out, deploy.ServiceData{Service: name, Manifest: man, Open: func(ctx context.Context, p string) (io.ReadCloser, error) {
			if name == "engine" && p == engineapi.FenceFile && fenceBytes != nil {
				return io.NopCloser(bytes.NewReader(fenceBytes)), nil
			}
			return src.Open(ctx, name, p)
		}})
	}
	return out
}

// runLocal restores onto the local stack: down first, then each data
// directory replaced in-process.
func runLocal(ctx context.Context, opts *Options, src Source, out *Output) error {
	ld, err := stack.OpenLocalData(opts.Env, opts.PortOffset)
	if err != nil {
		return err
	}
	say := iostreams.NewProgress(opts.Env.IO.ErrOut).Sayer("local: ")
	if opts.VerifyOnly {
		cl, err := maintenance.OpenServices(opts.Env, nil, ld.Offset, opts.EnvFile)
		if err != nil {
			return err
		}
		defer cl.Close()
		out.Verification, err = verify(ctx, cl, backupFacts(src), opts.Receipts, say)
		return err
	}
	if len(src.EnvFiles()) > 0 {
		say("the backup's env files are not applied to the local stack: it reads the operator's env file")
	}
	data := serviceData(src, nil)
	var reasons []string
	for _, sd := range data {
		entries, err := os.ReadDir(ld.DataDir(sd.Service))
		if err == nil && len(entries) > 0 {
			reasons = append(reasons, sd.Service+"'s data directory is not empty")
		}
	}
	out.Existing, out.Reasons = len(reasons) > 0, reasons
	running := ld.Running()
	if running {
		reasons = append([]string{fmt.Sprintf("the local stack at port offset %d runs and will be stopped", ld.Offset)}, reasons...)
	}
	if err := confirm(opts.Env, opts.Yes, fmt.Sprintf("restoring backup %s replaces the local stack's data", src.ID()), reasons); err != nil {
		return err
	}
	if running {
		if err := ld.Stop(ctx, opts.DownTimeout); err != nil {
			return err
		}
	}
	f, fb, err := fence(src, opts.Now())
	if err != nil {
		return err
	}
	for _, sd := range serviceData(src, fb) {
		dir := ld.DataDir(sd.Service)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		say("%s: %d files into %s", sd.Service, len(sd.Manifest.Files), dir)
		res, err := writeLocal(ctx, dir, sd)
		if err != nil {
			return fmt.Errorf("restore %s: %w", sd.Service, err)
		}
		out.Services[sd.Service] = res
		if sd.Service == "engine" {
			out.Fence = f // in its restored data, whatever fails after
		}
	}
	return nil
}

// writeLocal streams sd into dir through the same checks the one-shot
// containers make.
func writeLocal(ctx context.Context, dir string, sd deploy.ServiceData) (*restoredata.Result, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(restoredata.WriteStream(ctx, pw, sd.Manifest, sd.Open))
	}()
	res, err := restoredata.Replace(ctx, dir, pr)
	pr.CloseWithError(errors.New("restore ended")) // unblocks the writer after a refusal
	return res, err
}

// runTarget restores onto one deployed host.
func runTarget(ctx context.Context, opts *Options, src Source, out *Output) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	if _, err := opts.Fleet.One(cfg, "restore one host at a time"); err != nil {
		return err
	}
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	h := fl.Hosts[0]
	out.Target = h.Name
	offset := 0
	if opts.PortOffset != nil {
		offset = *opts.PortOffset
	}
	say := iostreams.NewProgress(opts.Env.IO.ErrOut).Sayer(h.Name + ": ")
	cl, err := maintenance.OpenServices(opts.Env, h, offset, opts.EnvFile)
	if err != nil {
		return err
	}
	defer cl.Close()
	if opts.VerifyOnly {
		out.Verification, err = verify(ctx, cl, backupFacts(src), opts.Receipts, say)
		return err
	}

	c := h.DeployConfig()
	c.ImageName, c.Tag = cfg.Images.Name, cfg.Images.Tag
	c.HealthTimeout, c.LockWait = opts.HealthTimeout, opts.LockWait
	events := iostreams.NewProgress(opts.Env.IO.ErrOut)
	c.Reporter = deploy.ReporterFunc(func(e deploy.Event) {
		events.Event(e.Target, string(e.Step), string(e.Status), e.Message)
	})
	d, err := deploy.New(c)
	if err != nil {
		return err
	}
	defer d.Close()

	release, deployed, err := d.CurrentEnvFiles(ctx)
	if err != nil {
		return err
	}
	if release == "" {
		return cli.WithHint(fmt.Errorf("%s: %w", h.Name, deploy.ErrNotDeployed), "a new SD card: `lucidctl deploy "+h.Name+"` first, then restore")
	}
	envWrite, unbound, err := envDiff(ctx, src, deployed, backupcmd.OperatorToken(opts.Env, opts.EnvFile), h.Name, out, say)
	if err != nil {
		return err
	}
	// The data chain's packs open only with a key of the env file it
	// will run with: the backup's own with --env, else the deployed one.
	if dc := deployfiles.ServiceEnvPath("datachain"); !opts.WriteEnv || envWrite[dc] == nil {
		b, err := dataChainEnvOf(ctx, src)
		if err != nil {
			return err
		}
		now := deployed[dc]
		if now == nil {
			now = deployed[deployfiles.EnvPath] // a release from before per-service files
		}
		if b != nil && now != nil {
			if err := keysReadBy(b, now); err != nil {
				return cli.WithHint(fmt.Errorf("%s: %w; nothing was stopped or written", h.Name, err),
					"--env writes the backup's env files back with its data (the restored stack then runs with the backup's secrets), or deploy first with the backup's encryption keys among ENCRYPTION_PREVIOUS_KEYS")
			}
		}
	}
	if len(out.EnvDiffer) > 0 && !opts.WriteEnv {
		say("WARNING: the deployed env files differ from the backup's: %s. Restored data may need the backup's secrets (ENCRYPTION_KEY, the tokens); --env writes them back", strings.Join(out.EnvDiffer, ", "))
	}
	var env map[string][]byte
	if opts.WriteEnv && len(envWrite) > 0 {
		if unbound {
			return cli.WithHint(fmt.Errorf("%s: the backup's env files hold operator credentials, and %w; nothing was restored", h.Name, deployfiles.ErrNoOperatorToken),
				"give the operator's env file (--env-file) or set LUCID_OPERATOR_TOKEN: the restored files are bound to "+h.Name+" with it")
		}
		env = envWrite
	}
	f, fb, err := fence(src, opts.Now())
	if err != nil {
		return err
	}
	res, err := d.Restore(ctx, deploy.RestoreOptions{
		Data: serviceData(src, fb), EnvFiles: env, Release: release, Backup: src.ID(),
		BeforeStop: func(ctx context.Context) error {
			reasons := holdsData(ctx, cl, backupFacts(src))
			out.Existing, out.Reasons = len(reasons) > 0, reasons
			return confirm(opts.Env, opts.Yes, fmt.Sprintf("restoring backup %s onto %s replaces its data", src.ID(), h.Name), reasons)
		},
	})
	if res != nil {
		out.Release, out.Services, out.AuditError = res.Release, res.Services, res.AuditError
		out.EnvWritten = append(out.EnvWritten, res.EnvFiles...)
		if res.Services["engine"] != nil {
			out.Fence = f // in the engine's restored volume, failure after or not
		}
	}
	if err != nil {
		return err
	}
	// The restore brought the backup's mesh CA: the trust bundle fetched
	// before it is not the one the services now present.
	after, err := maintenance.OpenServices(opts.Env, h, offset, opts.EnvFile)
	if err != nil {
		return err
	}
	defer after.Close()
	out.Verification, err = verify(ctx, after, backupFacts(src), opts.Receipts, say)
	return err
}

// envDiff compares the backup's env files with the deployed ones: the
// paths that differ go into out, and their backup bytes are returned.
func envDiff(ctx context.Context, src Source, deployed map[string][]byte, token, host string, out *Output, say func(string, ...any)) (write map[string][]byte, unbound bool, err error) {
	write = map[string][]byte{}
	for _, f := range src.EnvFiles() {
		if !deployfiles.IsServiceEnvPath(f.Path) {
			// A release holds the services' env files alone (one from
			// before per-service files held the shared .env.core); a
			// path of the manifest's choosing is never written.
			say("the backup's %s is not a service's env file: left out", f.Path)
			continue
		}
		b, err := readEnvFile(ctx, src, f)
		if err != nil {
			return nil, false, err
		}
		// The operator credentials are bound to host, whatever host the
		// backup was taken of (deployfiles.RebindOperatorCredentials).
		rebound, err := deployfiles.RebindOperatorCredentials(map[string][]byte{f.Path: b}, token, host)
		switch {
		case errors.Is(err, deployfiles.ErrNoOperatorToken):
			unbound = true
		case err != nil:
			return nil, false, fmt.Errorf("the backup's %s: %w", f.Path, err)
		default:
			b = rebound[f.Path]
		}
		if !bytes.Equal(deployed[f.Path], b) {
			out.EnvDiffer = append(out.EnvDiffer, f.Path)
			write[f.Path] = b
		}
	}
	return write, unbound, nil
}

// readEnvFile reads the backup's env file f, checked against its hash.
func readEnvFile(ctx context.Context, src Source, f snapshotapi.File) ([]byte, error) {
	rc, err := src.Open(ctx, EnvService, f.Path)
	if err != nil {
		return nil, fmt.Errorf("the backup's %s: %w", f.Path, err)
	}
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("the backup's %s: %w", f.Path, err)
	}
	if want := restoredata.FileOf(f.Path, b); f.SHA256 != "" && want.SHA256 != f.SHA256 {
		return nil, fmt.Errorf("the backup's %s: %w", f.Path, restoredata.ErrMismatch)
	}
	return b, nil
}

// dataChainEnvOf is the env file the backup's data chain ran with: its
// own, or in a backup from before each service had one, the shared
// .env.core; nil when it holds neither.
func dataChainEnvOf(ctx context.Context, src Source) ([]byte, error) {
	files := src.EnvFiles()
	for _, p := range []string{deployfiles.ServiceEnvPath("datachain"), deployfiles.EnvPath} {
		if i := slices.IndexFunc(files, func(f snapshotapi.File) bool { return f.Path == p }); i >= 0 {
			return readEnvFile(ctx, src, files[i])
		}
	}
	return nil, nil
}

// ErrKeysUnreadable marks a restore whose data chain packs the deployed
// data chain could not open.
var ErrKeysUnreadable = errors.New("the deployed data chain could not read the backup's packs")

// keysReadBy checks that the data chain of env file deployed holds every
// encryption key of the backup's env file (ENCRYPTION_KEY and
// ENCRYPTION_PREVIOUS_KEYS, current or previous): the backup's packs may
// be sealed with any of them. The error counts the missing keys, never
// shows one.
func keysReadBy(backup, deployed []byte) error {
	keysOf := func(b []byte) ([][]byte, error) {
		vals, err := envfile.Parse(b)
		if err != nil {
			return nil, err
		}
		prev, err := keyring.Parse(vals[keyring.EncryptionPrevious])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keyring.EncryptionPrevious, err)
		}
		var keys [][]byte
		if k := vals["ENCRYPTION_KEY"]; k != "" {
			keys = append(keys, []byte(k))
		}
		for _, e := range prev {
			keys = append(keys, e.Value)
		}
		return keys, nil
	}
	want, err := keysOf(backup)
	if err != nil {
		return fmt.Errorf("the backup's data chain env file: %w", err)
	}
	have, err := keysOf(deployed)
	if err != nil {
		return fmt.Errorf("the deployed data chain env file: %w", err)
	}
	missing := 0
	for _, k := range want {
		if !slices.ContainsFunc(have, func(h []byte) bool { return subtle.ConstantTimeCompare(h, k) == 1 }) {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%w: %d of the %d encryption keys the backup's env file holds (ENCRYPTION_KEY, ENCRYPTION_PREVIOUS_KEYS) are not among the deployed ones", ErrKeysUnreadable, missing, len(want))
	}
	return nil
}

// genesisTransactions are what every chain holds from its first block on:
// the transaction adding the validator's key.
const genesisTransactions = 1

// lostAnchors is what dropping a host's transactions beyond the backup's
// costs, and how to keep them: the fence lift takes blocks that follow
// the restored head only.
const lostAnchors = "anchors in them are lost unless another block manager holds them for `lucidctl maintenance fence lift --blocks-from` " +
	"(take a backup of the host first to keep them)"

// chainHolds says what the host's chain holds beyond a new node's, beside
// the backup's b; "" when it holds nothing.
func chainHolds(ctx context.Context, cl clients, b *snapshotapi.ChainFacts) string {
	hc, base, err := cl.Client(ctx, "engine", 30*time.Second)
	if err != nil {
		return "the engine could not be asked what it holds: " + err.Error()
	}
	eng := engineapi.New(base, hc)
	info, err := eng.Chain(ctx)
	if err != nil {
		return "the engine could not be asked what it holds: " + err.Error()
	}
	if info.TreeSize <= genesisTransactions {
		return ""
	}
	return fmt.Sprintf("the chain holds %d transactions in %d blocks", info.TreeSize, info.Height) + besideBackup(ctx, eng, info, b)
}

// besideBackup says how the host's chain stands beside the backup's b,
// as the end of a sentence: of another chain; ahead of it; or, when the
// backup's transactions are not the first ones of the host's chain (its
// tree at the backup's size has another root), of another history, all
// of which the restore replaces. A host behind the backup is not
// compared: only the backup's own tree could prove it a prefix.
func besideBackup(ctx context.Context, eng *engineapi.Client, info *engineapi.ChainInfo, b *snapshotapi.ChainFacts) string {
	switch {
	case b == nil:
		return ""
	case b.ChainID != info.ChainID:
		return fmt.Sprintf(", of another chain than the backup's (%s, the backup's %s)", info.ChainID, b.ChainID)
	case info.TreeSize < b.TreeSize:
		return fmt.Sprintf(", fewer than the backup's %d and not compared with its history: if they are not its first ones, "+
			"the restore drops them (take a backup of the host first to keep them)", b.TreeSize)
	}
	compared := ""
	switch err := extendsBackup(ctx, eng, info, b); {
	case errors.Is(err, chain.ErrInconsistent):
		// Blocks of another history never follow the restored head, so
		// no fence lift brings these back.
		return fmt.Sprintf(", of another history than the backup's (its first %d transactions are not the backup's): "+
			"the restore replaces all of them with the backup's, and anchors in them are lost (take a backup of the host first to keep them)", b.TreeSize)
	case err != nil:
		compared = fmt.Sprintf(" (not compared with the backup's history: %v)", err)
	}
	if info.TreeSize == b.TreeSize {
		return compared
	}
	blocks := ""
	if info.Height > b.Height {
		blocks = fmt.Sprintf(" in %d blocks", info.Height-b.Height)
	}
	return fmt.Sprintf(", %d transactions%s more than the backup%s: the restore drops them from this host, and %s",
		info.TreeSize-b.TreeSize, blocks, compared, lostAnchors)
}

// extendsBackup checks, with the engine's consistency proof, that the
// host's chain (info, at least the backup's size) begins with the
// backup's transactions: chain.ErrInconsistent when it does not. A
// backup whose facts carry no root is taken as a prefix.
func extendsBackup(ctx context.Context, eng *engineapi.Client, info *engineapi.ChainInfo, b *snapshotapi.ChainFacts) error {
	if b.Root == "" || b.TreeSize == 0 {
		return nil
	}
	older, err := base64.StdEncoding.DecodeString(b.Root)
	if err != nil {
		return fmt.Errorf("the backup's root: %w", err)
	}
	newer, err := base64.StdEncoding.DecodeString(info.Root)
	if err != nil {
		return fmt.Errorf("the engine's root: %w", err)
	}
	var p [][]byte
	if info.TreeSize > b.TreeSize {
		if p, err = eng.Consistency(ctx, b.TreeSize, info.TreeSize); err != nil {
			return fmt.Errorf("the engine's consistency proof: %w", err)
		}
	}
	switch err := logtree.VerifyConsistency(b.TreeSize, info.TreeSize, p, older, newer); {
	case errors.Is(err, logtree.ErrRootMismatch):
		return fmt.Errorf("%w: %w", chain.ErrInconsistent, err)
	case err != nil:
		return fmt.Errorf("the engine's consistency proof: %w", err) // malformed: proves nothing either way
	}
	return nil
}

// holdsData says what data the running services hold: transactions on
// the chain beyond the genesis transaction (a new node's chain of its own
// validator key and empty heartbeat blocks holds nothing), chunks in the
// data chain. A service that cannot be asked counts as holding data. What
// the host holds beyond the backup's facts is said as such: the restore
// drops it from the host, which --yes must not let pass unread.
func holdsData(ctx context.Context, cl clients, backup snapshotapi.Facts) []string {
	var reasons []string
	if r := chainHolds(ctx, cl, backup.Chain); r != "" {
		reasons = append(reasons, r)
	}
	if hc, base, err := cl.Client(ctx, "datachain", 30*time.Second); err != nil {
		reasons = append(reasons, "the data chain could not be asked what it holds: "+err.Error())
	} else if st, err := datachainapi.New(base, hc).Status(ctx); err != nil {
		reasons = append(reasons, "the data chain could not be asked what it holds: "+err.Error())
	} else if st.Chunks > 0 {
		reason := fmt.Sprintf("the data chain holds %d chunks of %d sessions", st.Chunks, st.Sessions)
		if b := backup.DataChain; b != nil && st.Chunks > b.Chunks {
			reason += fmt.Sprintf(", %d more than the backup: chunks stored since it are deleted from this host", st.Chunks-b.Chunks)
		}
		reasons = append(reasons, reason)
	}
	return reasons
}
