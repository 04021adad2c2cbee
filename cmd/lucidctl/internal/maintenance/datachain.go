package maintenance

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/packstore"
)

// ScrubOptions are the inputs of `lucidctl maintenance scrub`.
type ScrubOptions struct {
	Env   *cli.Env
	Flags Flags
}

func newScrubCmd(env *cli.Env) *cobra.Command {
	opts := &ScrubOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "scrub --target NAME",
		Short: "Re-read and check every chunk of the data chain on the hosts",
		Long: `Run a data-chain scrub now on each host: every chunk is re-read from its
pack and checked against its record checksum and its id (SHA-256). Reads and
writes go on meanwhile. A damaged chunk is named with its owner and the
owner's sessions that hold it; it is never served.

Exits 3 when a scrub found damage on any host.`,
		Example: `  lucidctl maintenance scrub --target pi
  lucidctl maintenance scrub --target fleet --skip-unreachable --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runScrub(cmd.Context(), opts) },
	}
	opts.Flags.add(cmd.Flags())
	return cli.SupportsJSON(cmd)
}

func datachain(ctx context.Context, s *session, timeout time.Duration) (*datachainapi.Client, error) {
	hc, base, err := s.Client(ctx, "datachain", timeout)
	if err != nil {
		return nil, err
	}
	return datachainapi.New(base, hc), nil
}

func runScrub(ctx context.Context, opts *ScrubOptions) error {
	out, err := each(ctx, opts.Env, &opts.Flags, []string{actionScrub}, func(ctx context.Context, s *session) (*packstore.ScrubReport, error) {
		dc, err := datachain(ctx, s, 0) // as long as the store takes: ctx ends it
		if err != nil {
			return nil, err
		}
		st, err := dc.Status(ctx)
		if err != nil {
			return nil, err
		}
		s.Say("scrubbing %d chunk(s) in %d pack(s)", st.Chunks, st.Packs)
		stop := ticker(s, "scrubbing")
		rep, err := dc.Scrub(ctx)
		stop()
		if err != nil {
			return nil, err
		}
		s.Say("scrubbed %d chunk(s), %s, in %s", rep.Chunks, iostreams.Bytes(rep.Bytes), rep.FinishedAt.Sub(rep.StartedAt).Round(time.Millisecond))
		return rep, nil
	})
	if out == nil {
		return err
	}
	damaged, hosts := 0, []string{}
	for _, h := range out.Hosts {
		if h.Result != nil && len(h.Result.Damaged) > 0 {
			damaged += len(h.Result.Damaged)
			hosts = append(hosts, h.Host)
		}
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[packstore.ScrubReport]) {
		r := h.Result
		w := opts.Env.IO.Out
		if len(r.Damaged) == 0 {
			fmt.Fprintf(w, "%s: scrub OK: %d chunk(s), %s, no damage\n", h.Host, r.Chunks, iostreams.Bytes(r.Bytes))
			return
		}
		fmt.Fprintf(w, "%s: scrub found %d damaged chunk(s) of %d\n", h.Host, len(r.Damaged), r.Chunks)
		for _, d := range r.Damaged {
			fmt.Fprintf(w, "  %s owner %s sessions [%s]: %s\n", d.ID, d.Owner, strings.Join(d.Sessions, " "), d.Error)
		}
	}); perr != nil {
		return perr
	}
	if damaged > 0 {
		// Damage is what a scrub is for: it decides the exit code even
		// when another host failed.
		return joinFirst(cli.Problems(fmt.Errorf("the scrub found %d damaged chunk(s) on %s", damaged, strings.Join(hosts, ", "))), err)
	}
	return err
}

// CompactResult is one host's compaction, with the store's dead bytes
// before and after it.
type CompactResult struct {
	packstore.CompactReport
	DeadBytesBefore int64 `json:"dead_bytes_before"`
	DeadBytesAfter  int64 `json:"dead_bytes_after"`
	// Keys counts the live records by the key that sealed them, after the
	// compaction (empty for a plain store): a previous encryption key with
	// none left can be dropped (lucidctl secrets prune --encryption-keys).
	Keys []packstore.KeyRecords `json:"keys"`
}

// CompactOptions are the inputs of `lucidctl maintenance compact`.
type CompactOptions struct {
	Env   *cli.Env
	Flags Flags
}

func newCompactCmd(env *cli.Env) *cobra.Command {
	opts := &CompactOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "compact --target NAME",
		Short: "Reclaim the space of deleted chunks in the data chain on the hosts",
		Long: `Run a data-chain compaction now on each host: every closed pack file that is
more than half deleted chunks is rewritten without them, while reads go on.
After an ENCRYPTION_KEY rotation, every pack holding records sealed with a
previous key is rewritten too, those records re-encrypted with the current
key; the output counts the live records by key id.
A pack that holds a damaged chunk is skipped until the chunk is repaired
(see scrub). The data chain also compacts after each periodic scrub.`,
		Example: `  lucidctl maintenance compact --target pi`,
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runCompact(cmd.Context(), opts) },
	}
	opts.Flags.add(cmd.Flags())
	return cli.SupportsJSON(cmd)
}

func runCompact(ctx context.Context, opts *CompactOptions) error {
	out, err := each(ctx, opts.Env, &opts.Flags, []string{actionCompact}, func(ctx context.Context, s *session) (*CompactResult, error) {
		dc, err := datachain(ctx, s, 0)
		if err != nil {
			return nil, err
		}
		before, err := dc.Status(ctx)
		if err != nil {
			return nil, err
		}
		s.Say("compacting: %d pack(s), %s, of which %s dead", before.Packs, iostreams.Bytes(before.PackBytes), iostreams.Bytes(before.DeadBytes))
		stop := ticker(s, "compacting")
		rep, err := dc.Compact(ctx)
		stop()
		if err != nil {
			return nil, err
		}
		after, err := dc.Status(ctx)
		if err != nil {
			return nil, err
		}
		s.Say("compacted %d pack(s), moved %d chunk(s)", len(rep.Packs), rep.MovedChunks)
		keys := after.Keys
		if keys == nil {
			keys = []packstore.KeyRecords{}
		}
		return &CompactResult{CompactReport: *rep, DeadBytesBefore: before.DeadBytes, DeadBytesAfter: after.DeadBytes, Keys: keys}, nil
	})
	if out == nil {
		return err
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[CompactResult]) {
		r := h.Result
		line := fmt.Sprintf("%s: compacted %d pack(s), reclaimed %s; dead bytes %s -> %s", h.Host, len(r.Packs), iostreams.Bytes(r.ReclaimedBytes), iostreams.Bytes(r.DeadBytesBefore), iostreams.Bytes(r.DeadBytesAfter))
		if len(r.Skipped) > 0 {
			line += fmt.Sprintf("; %d pack(s) skipped for a damaged chunk (run scrub)", len(r.Skipped))
		}
		if r.ReencryptedChunks > 0 {
			line += fmt.Sprintf("; re-encrypted %d chunk(s) with the current key", r.ReencryptedChunks)
		}
		if len(r.Keys) > 0 {
			var keys []string
			for _, k := range r.Keys {
				mark := ""
				switch {
				case k.Current:
					mark = " (current)"
				case !k.InRing:
					mark = " (not given: unreadable)"
				}
				keys = append(keys, fmt.Sprintf("%s%s %d", k.KeyID, mark, k.Records))
			}
			line += "; records by key: " + strings.Join(keys, ", ")
		}
		fmt.Fprintln(opts.Env.IO.Out, line)
	}); perr != nil {
		return perr
	}
	return err
}

// printOutput writes out: as JSON with --json, else each host that has a
// result by line (the hosts' errors are the command's error, on stderr).
func printOutput[T any](env *cli.Env, out *Output[T], line func(HostResult[T])) error {
	if env.JSON {
		return env.PrintJSON(out)
	}
	iostreams.SafeStrings(out) // what the hosts answered, for a terminal
	for _, h := range out.Hosts {
		if h.Result != nil {
			line(h)
		}
	}
	return nil
}

// joinFirst joins errs, first's exit code deciding.
func joinFirst(first error, rest ...error) error {
	for _, e := range rest {
		if e != nil {
			return fmt.Errorf("%w\n%w", first, e)
		}
	}
	return first
}
