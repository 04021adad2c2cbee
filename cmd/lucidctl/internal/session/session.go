// Package session implements `lucidctl session push`: it stores a
// directory of chunk files as one session in the data chain, in file name
// order, with a progress bar, and can seal it into the chain.
package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/catalog"
)

// NewCmd returns the session command.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "session <command>",
		Short: "Store recorded sessions in the data chain",
		Args:  cli.Subcommands,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newPushCmd(env))
	return cmd
}

// PushOptions are the inputs of `lucidctl session push`.
type PushOptions struct {
	Env       *cli.Env
	Dir       string
	URL       string
	Token     string
	SessionID string
	Seal      bool
	Owner     string
	StartedAt string
	EndedAt   string
	Workers   int
	// Wait waits, after --seal, until the anchor is sealed or refused.
	Wait bool
	// Receipt is the file the sealed anchor's receipt goes to ("": the
	// session id with .tlog-proof, in the working directory).
	Receipt     string
	WaitTimeout time.Duration
}

func newPushCmd(env *cli.Env) *cobra.Command {
	opts := &PushOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "push DIR",
		Short: "Store a directory of chunk files as a session, and optionally seal it",
		Long: `Store every regular file of DIR as one chunk of a session, in file name
order (index 0, 1, ...), then, with --seal, freeze the session and anchor its
Merkle root on the chain. A push can be repeated: chunks already stored at
their index are accepted again.

The session belongs to the user the token names (its subject): only that
user can read, add to or seal it, and the anchor on the chain names them as
its owner. --owner, if given, must be that subject.

The manifest hash sealed with the session is the SHA-256 of the lines
"<index> <chunk id> <file name>", one per chunk.

With --wait, push then waits (up to --wait-timeout) until the chain has
sealed the anchor, which takes a block or two, and writes its receipt, a
c2sp.org/tlog-proof@v1 file that ` + "`lucidctl verify receipt`" + ` checks offline, to
--receipt FILE (default <session id>.tlog-proof in the working directory);
it prints the command that checks it, with the chain's validator key. An
anchor the chain refuses fails the push (exit 1) with the reason.

--url defaults to the local stack's gateway, http://127.0.0.1:8080 (the
port shifted by local.port_offset of lucid.yaml).`,
		Example: `  export LUCID_TOKEN=$(lucidctl token --sub alice@example.org)
  lucidctl session push ./recording --seal
  lucidctl session push ./recording --seal --wait --receipt recording.tlog-proof`,
		Args: cli.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Dir = args[0]
			if cmd.Flags().Changed("receipt") || cmd.Flags().Changed("wait-timeout") {
				opts.Wait = true // either only makes sense waiting
			}
			if opts.Wait && !opts.Seal {
				return cli.Usage(errors.New("--wait, --receipt and --wait-timeout wait for the seal: give --seal too"))
			}
			return runPush(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.URL, "url", "", "the gateway's URL (default: the local stack's, http://127.0.0.1:8080)")
	f.StringVar(&opts.Token, "token", "", "the user's token (default $LUCID_TOKEN; `lucidctl token` mints one)")
	f.StringVar(&opts.SessionID, "session-id", "", "session id (a UUID; default: a new one)")
	f.BoolVar(&opts.Seal, "seal", false, "seal the session and anchor its root when all chunks are stored")
	f.StringVar(&opts.Owner, "owner", "", "the owner the anchor names: the token's subject, which is the default and the only value allowed")
	f.StringVar(&opts.StartedAt, "started-at", "", "session start, RFC 3339 (default: the oldest file's time)")
	f.StringVar(&opts.EndedAt, "ended-at", "", "session end, RFC 3339 (default: the newest file's time)")
	f.IntVar(&opts.Workers, "workers", 4, "chunks in flight at once")
	f.BoolVar(&opts.Wait, "wait", false, "with --seal, wait until the anchor is sealed and write its receipt")
	f.StringVar(&opts.Receipt, "receipt", "", "with --seal, the file the receipt goes to (implies --wait; default <session id>.tlog-proof)")
	f.DurationVar(&opts.WaitTimeout, "wait-timeout", 2*time.Minute, "with --wait, how long to wait for the seal")
	return cli.SupportsJSON(cmd)
}

// PushResult is the --json form of a push.
type PushResult struct {
	SessionID string               `json:"session_id"`
	Chunks    int                  `json:"chunks"`
	Bytes     int64                `json:"bytes"`
	ChunkIDs  []string             `json:"chunk_ids"`
	Sealed    *datachainapi.Sealed `json:"sealed,omitempty"`
	// With --wait: the anchor once the chain sealed it, where its receipt
	// was written, and the chain's validator keys it verifies with.
	Anchor      *anchoringapi.AnchorStatus `json:"anchor,omitempty"`
	ReceiptFile string                     `json:"receipt_file,omitempty"`
	Validators  []string                   `json:"validators,omitempty"`
}

type file struct {
	name string
	size int64
	mod  time.Time
}

func runPush(ctx context.Context, opts *PushOptions) error {
	if opts.Token == "" { // read here, not as the flag's default, which --help would print
		opts.Token = opts.Env.Getenv("LUCID_TOKEN")
	}
	if opts.SessionID == "" {
		opts.SessionID = uuid.NewString()
	} else if u, err := uuid.Parse(opts.SessionID); err != nil || u.String() != opts.SessionID {
		return cli.Usage(fmt.Errorf("--session-id %q is not a lower-case UUID", opts.SessionID))
	}
	if opts.Token == "" {
		return cli.WithHint(errors.New("a session belongs to a user: give their token with --token or $LUCID_TOKEN"),
			"`lucidctl token --sub NAME` mints one from the env file's JWT_SECRET_KEY")
	}
	if opts.Workers < 1 || opts.Workers > 64 {
		return cli.Usage(fmt.Errorf("--workers %d is outside 1..64", opts.Workers))
	}
	if opts.Wait && opts.WaitTimeout <= 0 {
		return cli.Usage(fmt.Errorf("--wait-timeout %s is not positive", opts.WaitTimeout))
	}
	if opts.URL == "" {
		cfg, err := opts.Env.Config()
		if err != nil {
			return err
		}
		gw, _ := catalog.Lookup(catalog.GatewayService)
		opts.URL = "http://127.0.0.1:" + strconv.Itoa(gw.Port+cfg.Local.PortOffset)
	}
	if opts.Wait && opts.Receipt == "" {
		opts.Receipt = opts.SessionID + ".tlog-proof"
	}
	entries, err := os.ReadDir(opts.Dir)
	if err != nil {
		return err
	}
	var files []file
	var total int64
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		files = append(files, file{e.Name(), fi.Size(), fi.ModTime()})
		total += fi.Size()
	}
	if len(files) == 0 {
		return fmt.Errorf("%s has no files to push", opts.Dir)
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.name, b.name) })

	hc := &http.Client{Timeout: 2 * time.Minute, Transport: api.WithBearer(nil, opts.Token)}
	client := datachainapi.New(opts.URL, hc)
	bar := newProgress(opts.Env, total, len(files))
	ids := make([]string, len(files))
	jobs := make(chan int)
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < opts.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				data, err := os.ReadFile(filepath.Join(opts.Dir, files[i].name))
				if err == nil {
					var st *datachainapi.Stored
					if st, err = client.PutChunk(ctx, opts.SessionID, uint64(i), data); err == nil {
						ids[i] = st.ID
						bar.add(int64(len(data)))
						continue
					}
				}
				errOnce.Do(func() { firstErr = fmt.Errorf("chunk %d (%s): %w", i, files[i].name, err); cancel() })
			}
		}()
	}
	for i := range files {
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	bar.done()
	if firstErr != nil {
		return firstErr
	}

	res := PushResult{SessionID: opts.SessionID, Chunks: len(files), Bytes: total, ChunkIDs: ids}
	if opts.Seal {
		h := sha256.New()
		for i, f := range files {
			fmt.Fprintf(h, "%d %s %s\n", i, ids[i], f.name)
		}
		start, end := opts.StartedAt, opts.EndedAt
		if start == "" {
			start = slices.MinFunc(files, func(a, b file) int { return a.mod.Compare(b.mod) }).mod.UTC().Format(time.RFC3339)
		}
		if end == "" {
			end = slices.MaxFunc(files, func(a, b file) int { return a.mod.Compare(b.mod) }).mod.UTC().Format(time.RFC3339)
		}
		sealed, err := client.Seal(ctx, opts.SessionID, datachainapi.SealRequest{
			Owner: opts.Owner, ManifestHash: hex.EncodeToString(h.Sum(nil)), StartedAt: start, EndedAt: end,
		})
		if err != nil {
			return fmt.Errorf("seal: %w", err)
		}
		res.Sealed = sealed
		if opts.Wait {
			if err := waitAndWriteReceipt(ctx, opts, hc, &res); err != nil {
				return err
			}
		}
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(res)
	}
	out := opts.Env.IO.Out
	fmt.Fprintf(out, "session %s: %d chunks, %d bytes\n", res.SessionID, res.Chunks, res.Bytes)
	if res.Sealed != nil {
		fmt.Fprintf(out, "sealed: merkle root %s\n", res.Sealed.Root)
		a := res.Sealed.Anchor
		if res.Anchor != nil {
			a = res.Anchor
		}
		if a != nil {
			fmt.Fprintf(out, "anchor: transaction %s, %s\n", a.TxID, a.Status)
		}
	}
	if res.ReceiptFile != "" {
		fmt.Fprintf(out, "receipt: %s\n", res.ReceiptFile)
	}
	return nil
}

// pollEvery is how often --wait asks about the anchor: blocks are cut
// every 10 s by default.
const pollEvery = time.Second

// waitAndWriteReceipt waits until the session's anchor is sealed (its
// receipt then written to opts.Receipt) or refused (an error with the
// chain's reason), or --wait-timeout passes.
func waitAndWriteReceipt(ctx context.Context, opts *PushOptions, hc *http.Client, res *PushResult) error {
	anchors := anchoringapi.New(opts.URL, hc)
	fmt.Fprintf(opts.Env.IO.ErrOut, "waiting for the chain to seal the anchor of session %s ...\n", opts.SessionID)
	ctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		st, err := anchors.Get(ctx, opts.SessionID)
		switch {
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("anchor status of session %s: %w", opts.SessionID, err)
		case err != nil:
		case st.Status == anchoringapi.StatusRefused:
			return fmt.Errorf("the chain refused the anchor of session %s: %s (%s)", opts.SessionID, st.Reason, st.Code)
		case st.Status == anchoringapi.StatusSealed && st.Receipt != "":
			if err := writeReceipt(opts.Receipt, st.Receipt); err != nil {
				return err
			}
			res.Anchor, res.ReceiptFile = st, opts.Receipt
			res.Anchor.Receipt = "" // it is in the file
			// The key to check it with, as the chain declares it; a
			// verifier who wants more pins it from elsewhere.
			if info, err := engineapi.New(opts.URL+"/blockchain", hc).Chain(ctx); err == nil {
				res.Validators = info.Validators
			}
			key := "<validator key>"
			if len(res.Validators) > 0 {
				key = res.Validators[0]
			}
			fmt.Fprintf(opts.Env.IO.ErrOut, "sealed in block %d; receipt written to %s\nverify it offline: lucidctl verify receipt %s --key %s\n",
				st.Height, opts.Receipt, opts.Receipt, key)
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return cli.WithHint(fmt.Errorf("the anchor of session %s is not sealed after %s", opts.SessionID, opts.WaitTimeout),
					"it may still be: GET "+opts.URL+"/api/v1/anchors/"+opts.SessionID+" with the token shows its status and, once sealed, the receipt")
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// writeReceipt writes a receipt (public: it holds no secret) to path,
// creating its folder.
func writeReceipt(path, receipt string) error {
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("receipt: %w", err)
		}
	}
	if err := os.WriteFile(path, []byte(receipt), 0o644); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	return nil
}

// progress shows bytes pushed on stderr: a redrawn bar on a terminal, a
// line every few seconds otherwise.
type progress struct {
	w      io.Writer
	tty    bool
	total  int64
	files  int
	pushed atomic.Int64
	count  atomic.Int64
	mu     sync.Mutex
	last   time.Time
	start  time.Time
}

func newProgress(env *cli.Env, total int64, files int) *progress {
	return &progress{w: env.IO.ErrOut, tty: env.IO.IsStderrTTY(), total: total, files: files, start: time.Now()}
}

func (p *progress) add(n int64) {
	d, c := p.pushed.Add(n), p.count.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	every := 3 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if time.Since(p.last) < every && c != int64(p.files) {
		return
	}
	p.last = time.Now()
	p.draw(d, c)
}

func (p *progress) draw(d, c int64) {
	pct := 100.0
	if p.total > 0 {
		pct = float64(d) * 100 / float64(p.total)
	}
	rate := float64(d) / time.Since(p.start).Seconds() / (1 << 20)
	if p.tty {
		const width = 30
		fill := int(pct / 100 * width)
		fmt.Fprintf(p.w, "\r[%s%s] %5.1f%%  %d/%d chunks  %.1f MiB/s ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct, c, p.files, rate)
		return
	}
	fmt.Fprintf(p.w, "pushed %d/%d chunks, %d/%d bytes (%.1f%%), %.1f MiB/s\n", c, p.files, d, p.total, pct, rate)
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}
