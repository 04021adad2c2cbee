package maintenance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/sshx"
)

// importBatch is how many blocks --blocks-from fetches, then imports, at
// a time.
const importBatch = 256

// Audit actions of `maintenance fence`.
const (
	actionFenceStatus = "chain.fence.status"
	actionFenceLift   = "chain.fence.lift"
	// actionFenceLiftFork is a lift that may void heights.
	actionFenceLiftFork = "chain.fence.lift.accept-fork"
)

func newFenceCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fence <command>",
		Short: "Show and lift the restore fence of a restored engine",
		Long: `A restored engine is fenced: it serves reads and takes transactions, but
produces no block until the operator tells it the highest height the outside
world knows (the newest receipt's, or a block manager's elsewhere), because
the node it replaces may have sealed blocks after the backup. See "A restore
never forks the chain" in docs/backup.md.`,
		Args: cli.Subcommands,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newFenceStatusCmd(env), newFenceLiftCmd(env))
	return cmd
}

// FenceOptions are the inputs of `lucidctl maintenance fence status|lift`.
type FenceOptions struct {
	Env   *cli.Env
	Flags Flags
	lift  bool
	// KnownHeight is the highest height the outside world knows (0: not
	// given); Receipt a receipt file whose checkpoint's height is taken
	// instead.
	KnownHeight uint64
	Receipt     string
	// BlocksFrom is a block manager's API (or a gateway in front of one)
	// to fetch the missing blocks from, with BlocksToken (default
	// $LUCID_TOKEN).
	BlocksFrom, BlocksToken string
	// AcceptFork lifts over missing heights, voiding them; Yes skips the
	// typed confirmation.
	AcceptFork, Yes bool
}

// LiftResult is one host's result of `fence lift`.
type LiftResult struct {
	// KnownHeight is the height the lift was asked for, and KnownFrom
	// where it came from: "flag", "receipt" or "blocks-from".
	KnownHeight uint64 `json:"known_height"`
	KnownFrom   string `json:"known_from"`
	// Imported counts the blocks fetched with --blocks-from and imported.
	Imported int                   `json:"imported"`
	Status   engineapi.FenceStatus `json:"status"`
}

func newFenceStatusCmd(env *cli.Env) *cobra.Command {
	opts := &FenceOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "status --target NAME",
		Short: "Show whether each host's engine is fenced, and the forks accepted",
		Long: `Show each host's engine fence: whether it is fenced, the backup it was
restored from, the height it holds, the height it can produce again exactly
as it signed it before (its chain plus its signing guard), and the forks
accepted when lifting a fence.

Exit status: 0 when no host is fenced, 3 when one is, 1 on other failures,
4 when SSH or the operator token is refused.`,
		Example: `  lucidctl maintenance fence status --target pi`,
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runFence(cmd.Context(), opts) },
	}
	opts.Flags.add(cmd.Flags())
	return cli.SupportsJSON(cmd)
}

func newFenceLiftCmd(env *cli.Env) *cobra.Command {
	opts := &FenceOptions{Env: env, lift: true}
	cmd := &cobra.Command{
		Use:   "lift --target NAME (--known-height N | --receipt FILE | --blocks-from URL) [--accept-fork --yes]",
		Short: "Lift a restored engine's fence, given the highest height the outside world knows",
		Long: `Tell the fenced engine the highest height the outside world knows, and lift
its fence if it holds that height: its chain, or blocks its signing guard
holds (which it then produces again exactly as before).

  --known-height N   the height, as you know it
  --receipt FILE     the height of the newest receipt you hold (checked
                     against the engine's validator keys first, or, signed
                     by a validator removed since, against the engine's own
                     block at its height)
  --blocks-from URL  a block manager that still has the blocks (another
                     Pi's, or a gateway in front of one; a user token from
                     --blocks-token or $LUCID_TOKEN): the blocks above the
                     engine's height are fetched, and imported after the
                     engine checks each is signed by its own key and
                     extends its chain; without --known-height or
                     --receipt, the height is that block manager's newest

When the engine holds less than the known height, the lift is refused
(exit 1) naming the missing heights. --accept-fork lifts it all the same:
the blocks the outside world holds at the missing heights become VOID, the
engine signs other blocks there, and receipts from those heights no longer
verify against the chain. The engine records the fork for good (status
shows it). It asks you to type "fork", or takes --yes.

Exit status: 0 lifted, 1 refused or failed, 2 usage (or an unconfirmed
--accept-fork), 3 the receipt does not verify, 4 SSH or the operator token
refused.`,
		Example: `  lucidctl maintenance fence lift --target pi --receipt newest.tlog-proof
  lucidctl maintenance fence lift --target pi --blocks-from https://pi2.example.org:8080
  lucidctl maintenance fence lift --target pi --known-height 4812 --accept-fork --yes`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			given := 0
			for _, f := range []string{"known-height", "receipt", "blocks-from"} {
				if cmd.Flags().Changed(f) {
					given++
				}
			}
			if given == 0 {
				return cli.Usage(errors.New("say what height the outside world knows: --known-height, --receipt or --blocks-from"))
			}
			if cmd.Flags().Changed("known-height") && cmd.Flags().Changed("receipt") {
				return cli.Usage(errors.New("--known-height and --receipt both give the height: use one"))
			}
			if opts.AcceptFork && opts.BlocksFrom != "" {
				return cli.Usage(errors.New("--accept-fork and --blocks-from: import the blocks, or accept their loss, not both"))
			}
			return runFence(cmd.Context(), opts)
		},
	}
	opts.Flags.add(cmd.Flags())
	f := cmd.Flags()
	f.Uint64Var(&opts.KnownHeight, "known-height", 0, "the highest height the outside world knows")
	f.StringVar(&opts.Receipt, "receipt", "", "take the height from this receipt's checkpoint (the newest receipt you hold)")
	f.StringVar(&opts.BlocksFrom, "blocks-from", "", "fetch the missing blocks from this block manager's API (or a gateway's) and import them")
	f.StringVar(&opts.BlocksToken, "blocks-token", "", "a user token for --blocks-from (default $LUCID_TOKEN)")
	f.BoolVar(&opts.AcceptFork, "accept-fork", false, "lift even though heights are missing: they become void (recorded for good)")
	f.BoolVar(&opts.Yes, "yes", false, "do not ask to confirm --accept-fork")
	return cli.SupportsJSON(cmd)
}

func runFence(ctx context.Context, opts *FenceOptions) error {
	if !opts.lift {
		return runFenceStatus(ctx, opts)
	}
	// A fence is one engine's: lift it on one host at a time.
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	if opts.Flags.Target != "" || len(opts.Flags.Hosts) > 0 {
		if _, err := opts.Flags.One(cfg, "a fence is one engine's"); err != nil {
			return err
		}
	}
	var receipt []byte
	if opts.Receipt != "" {
		if receipt, err = os.ReadFile(opts.Receipt); err != nil {
			return fmt.Errorf("read receipt: %w", err)
		}
		if _, err := chain.ParseReceipt(receipt); err != nil {
			return cli.Problems(fmt.Errorf("%s: %w", opts.Receipt, err))
		}
	}
	var remote *engineapi.Client
	if opts.BlocksFrom != "" {
		token := opts.BlocksToken
		if token == "" {
			token = opts.Env.Getenv("LUCID_TOKEN")
		}
		hc := &http.Client{Timeout: time.Minute}
		if token != "" {
			hc.Transport = api.WithBearer(nil, token)
		}
		remote = engineapi.New(opts.BlocksFrom, hc)
	}
	action := actionFenceLift
	if opts.AcceptFork {
		action = actionFenceLiftFork
	}
	out, err := each(ctx, opts.Env, &opts.Flags, []string{action}, func(ctx context.Context, s *session) (*LiftResult, error) {
		hc, base, err := s.Client(ctx, "engine", time.Minute)
		if err != nil {
			return nil, err
		}
		eng := engineapi.New(base, hc)
		return liftFence(ctx, opts, s, eng, receipt, remote)
	})
	if out == nil {
		return err
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[LiftResult]) {
		r := h.Result
		w := opts.Env.IO.Out
		fmt.Fprintf(w, "%s: fence lifted at known height %d (from %s); the engine holds %d and produces blocks again\n", h.Host, r.KnownHeight, r.KnownFrom, r.Status.Height)
		if r.Imported > 0 {
			fmt.Fprintf(w, "%s: imported %d block(s) from %s\n", h.Host, r.Imported, opts.BlocksFrom)
		}
		printForks(opts.Env, h.Host, r.Status.Forks)
	}); perr != nil {
		return perr
	}
	return err
}

// liftFence works out the known height, imports blocks if asked, confirms
// a fork, and lifts the fence of one host's engine.
func liftFence(ctx context.Context, opts *FenceOptions, s *session, eng *engineapi.Client, receipt []byte, remote *engineapi.Client) (*LiftResult, error) {
	token := s.EngineOperator()
	st, err := eng.Fence(ctx, token)
	if errors.Is(err, engineapi.ErrNotFound) {
		return nil, errors.New("the engine is not fenced: nothing to lift")
	}
	if err != nil {
		return nil, err
	}
	if !st.Fenced {
		return nil, errors.New("the engine is not fenced: nothing to lift")
	}
	res := &LiftResult{KnownHeight: opts.KnownHeight, KnownFrom: "flag"}
	switch {
	case receipt != nil:
		v, err := verifyReceipt(ctx, eng, receipt)
		var bad *badReceiptError
		if errors.As(err, &bad) {
			return nil, cli.Problems(fmt.Errorf("the receipt %s %w", opts.Receipt, bad))
		}
		if err != nil {
			return nil, err
		}
		res.KnownHeight, res.KnownFrom = v.Header.Height, "receipt"
		s.Say("the receipt's checkpoint is at height %d", res.KnownHeight)
	case remote != nil && opts.KnownHeight == 0:
		b, err := remote.LatestBlock(ctx)
		if err != nil {
			return nil, fmt.Errorf("the newest block of %s: %w", opts.BlocksFrom, err)
		}
		head := b.Height
		res.KnownHeight, res.KnownFrom = head, "blocks-from"
		s.Say("%s holds height %d", opts.BlocksFrom, head)
	}
	if remote != nil && res.KnownHeight > st.Height {
		s.Say("fetching blocks %d..%d from %s and importing them; the engine checks each", st.Height+1, res.KnownHeight, opts.BlocksFrom)
		// In batches, so that a long gap is never all in memory.
		for from := st.Height + 1; from <= res.KnownHeight; {
			to := min(res.KnownHeight, from+importBatch-1)
			blocks := make([]*chain.Block, 0, to-from+1)
			for h := from; h <= to; h++ {
				b, err := remote.Block(ctx, h)
				if err != nil {
					return nil, fmt.Errorf("block %d from %s: %w", h, opts.BlocksFrom, err)
				}
				blocks = append(blocks, b)
			}
			ir, err := eng.ImportBlocks(ctx, token, blocks)
			if err != nil {
				return nil, fmt.Errorf("import: %w", err)
			}
			res.Imported += ir.Imported
			st = &ir.Status
			s.Say("imported blocks %d..%d", from, to)
			from = to + 1
		}
	}
	if opts.AcceptFork && res.KnownHeight > st.GuardedHeight {
		if err := confirmFork(opts, s.Host, st.GuardedHeight+1, res.KnownHeight); err != nil {
			return nil, err
		}
	}
	by := sshx.LocalUser(opts.Env.Getenv)
	if host, err := os.Hostname(); err == nil {
		by += "@" + host
	}
	known := res.KnownHeight
	after, err := eng.LiftFence(ctx, token, engineapi.LiftFenceRequest{KnownHeight: &known, AcceptFork: opts.AcceptFork, By: by})
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == engineapi.CodeFenced && ae.Status == http.StatusConflict {
			return nil, cli.WithHint(err, "fetch the missing blocks from a block manager that has them (--blocks-from URL), or, if none has them, accept the fork (--accept-fork) and void them")
		}
		return nil, err
	}
	res.Status = *after
	return res, nil
}

// badReceiptError is a receipt that does not verify against the engine's
// chain.
type badReceiptError struct{ err error }

func (e *badReceiptError) Error() string {
	return "does not verify against the engine's validators or its chain: " + e.err.Error()
}
func (e *badReceiptError) Unwrap() error { return e.err }

// verifyReceipt checks a receipt against the fenced engine's chain: its
// validators' keys, or, for a receipt signed by a validator removed since
// (a dead Pi's, replaced), the engine's own block at the receipt's height,
// which the chain checked when it stored it. A receipt above the engine's
// height must carry a current validator's signature: a key the chain has
// removed could have been stolen. A *badReceiptError says it does not
// verify; any other error, that the engine could not be asked.
func verifyReceipt(ctx context.Context, eng *engineapi.Client, receipt []byte) (*chain.VerifiedReceipt, error) {
	info, err := eng.Chain(ctx)
	if err != nil {
		return nil, err
	}
	vs, err := chain.Verifiers(info.Validators)
	if err != nil {
		return nil, err
	}
	v, err := chain.VerifyReceipt(receipt, vs, info.Origin)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, chain.ErrSignature) {
		return nil, &badReceiptError{err}
	}
	height, herr := chain.ReceiptHeight(receipt)
	if herr != nil || height > info.Height {
		return nil, &badReceiptError{err}
	}
	b, berr := eng.Block(ctx, height)
	switch {
	case errors.Is(berr, engineapi.ErrNotFound):
		return nil, &badReceiptError{err}
	case berr != nil:
		return nil, fmt.Errorf("the engine's block %d, to check the receipt against: %w", height, berr)
	}
	v, cerr := chain.VerifyReceiptInChain(receipt, b, info.Origin)
	if errors.Is(cerr, chain.ErrNotInChain) {
		return nil, &badReceiptError{err} // the signature's is the better reason
	}
	if cerr != nil {
		return nil, &badReceiptError{cerr}
	}
	return v, nil
}

// confirmFork says plainly what accepting the fork voids, and asks the
// operator to type "fork" unless --yes.
func confirmFork(opts *FenceOptions, host string, from, to uint64) error {
	warn := fmt.Sprintf("%s: --accept-fork VOIDS heights %d..%d: the blocks the outside world holds there are lost, this engine signs other blocks at those heights, and receipts from them will not verify against the chain. The engine records the fork for good.", host, from, to)
	fmt.Fprintln(opts.Env.IO.ErrOut, warn)
	if opts.Yes {
		return nil
	}
	fmt.Fprint(opts.Env.IO.ErrOut, `Type "fork" to accept it: `)
	line, _ := bufio.NewReader(opts.Env.IO.In).ReadString('\n')
	if strings.TrimSpace(line) != "fork" {
		return cli.Usage(errors.New("the fork was not accepted (type \"fork\", or give --yes); the engine stays fenced"))
	}
	return nil
}

func runFenceStatus(ctx context.Context, opts *FenceOptions) error {
	out, err := each(ctx, opts.Env, &opts.Flags, []string{actionFenceStatus}, func(ctx context.Context, s *session) (*engineapi.FenceStatus, error) {
		hc, base, err := s.Client(ctx, "engine", shortRequest)
		if err != nil {
			return nil, err
		}
		eng := engineapi.New(base, hc)
		st, err := eng.Fence(ctx, s.EngineOperator())
		if errors.Is(err, engineapi.ErrNotFound) {
			info, err := eng.Chain(ctx)
			if err != nil {
				return nil, err
			}
			return &engineapi.FenceStatus{Height: info.Height, GuardedHeight: info.Height}, nil
		}
		return st, err
	})
	if out == nil {
		return err
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[engineapi.FenceStatus]) {
		st, w := h.Result, opts.Env.IO.Out
		if !st.Fenced {
			fmt.Fprintf(w, "%s: not fenced, height %d\n", h.Host, st.Height)
		} else {
			what := "fenced"
			if f := st.Fence; f != nil {
				what = fmt.Sprintf("FENCED (%s", orDash(f.Reason))
				if f.Backup != "" {
					what += " from backup " + f.Backup
				}
				what += fmt.Sprintf(" at height %d, %s)", f.RestoredHeight, f.At.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "%s: %s; holds height %d, can produce again exactly to %d; producing no block until `lucidctl maintenance fence lift`\n", h.Host, what, st.Height, st.GuardedHeight)
		}
		printForks(opts.Env, h.Host, st.Forks)
	}); perr != nil {
		return perr
	}
	if err != nil {
		return err
	}
	for _, h := range out.Hosts {
		if h.Result != nil && h.Result.Fenced {
			return &cli.SilentError{Code: cli.ExitProblems}
		}
	}
	// A host skipped as unreachable may be the fenced one: not knowing is
	// no all-clear (as with status --target).
	if len(out.Skipped) > 0 {
		names := make([]string, len(out.Skipped))
		for i, sk := range out.Skipped {
			names[i] = sk.Host
		}
		return cli.Problems(fmt.Errorf("whether the engine of %s is fenced is not known: not reached", strings.Join(names, ", ")))
	}
	return nil
}

func printForks(env *cli.Env, host string, forks []engineapi.ForkNote) {
	for _, k := range forks {
		by := ""
		if k.By != "" {
			by = " by " + k.By
		}
		fmt.Fprintf(env.IO.Out, "%s: fork accepted %s%s: heights %d..%d are void\n", host, k.At.Format(time.RFC3339), by, k.From, k.To)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
