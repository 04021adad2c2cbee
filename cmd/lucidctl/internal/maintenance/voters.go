package maintenance

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/pkg/api/engineapi"
)

func newVotersCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "voters <command>",
		Short: "List, add and remove the chain's voters (Raft members and validators)",
		Args:  cli.Subcommands,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newVotersListCmd(env), newVoterAddCmd(env), newVoterRemoveCmd(env))
	return cmd
}

// VotersOptions are the inputs of `lucidctl maintenance voters list|add|remove`.
type VotersOptions struct {
	Env   *cli.Env
	Flags Flags
	// ID is the node to add or remove; Address its Raft address (add);
	// Key its validator key (add: required; remove: also drops it from
	// the validators).
	ID, Address, Key string
	action           string
}

func newVotersListCmd(env *cli.Env) *cobra.Command {
	opts := &VotersOptions{Env: env}
	cmd := &cobra.Command{
		Use:     "list --target NAME",
		Short:   "Show each host's engine: its Raft state, leader and servers",
		Example: `  lucidctl maintenance voters list --target pi`,
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runVoters(cmd.Context(), opts) },
	}
	opts.Flags.add(cmd.Flags())
	return cli.SupportsJSON(cmd)
}

func newVoterAddCmd(env *cli.Env) *cobra.Command {
	opts := &VotersOptions{Env: env, action: actionVoterAdd}
	cmd := &cobra.Command{
		Use:   "add NODE_ID --address HOST:PORT --key KEY --target LEADER",
		Short: "Add a node to the chain as a validator and Raft voter",
		Long: `Seal the node's validator key into the chain (a system transaction), then
add the node as a Raft voter, through the leader's engine. Start the new node
with LUCID_RAFT_BOOTSTRAP=false first, and read its validator key from its
consensus status (` + "`lucidctl maintenance voters list --target NEWPI`" + `).

A voter that cannot be reached costs the cluster its quorum: with one node,
adding a second that is not running stops the chain until it joins.`,
		Example: `  lucidctl maintenance voters add lucid-blockchain-engine-pi2 --address 192.168.1.12:8094 --key 'lucid-pi2+1a2b3c4d+AX...' --target pi`,
		Args:    cli.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []string{"address", "key"} {
				if err := cli.RequireFlag(cmd, f); err != nil {
					return err
				}
			}
			opts.ID = args[0]
			return runVoters(cmd.Context(), opts)
		},
	}
	opts.Flags.add(cmd.Flags())
	cmd.Flags().StringVar(&opts.Address, "address", "", "the node's Raft address as the leader reaches it (host:port, LUCID_RAFT_ADVERTISE)")
	cmd.Flags().StringVar(&opts.Key, "key", "", "the node's validator key (validator_key of its consensus status)")
	return cli.SupportsJSON(cmd)
}

func newVoterRemoveCmd(env *cli.Env) *cobra.Command {
	opts := &VotersOptions{Env: env, action: actionVoterRemove}
	cmd := &cobra.Command{
		Use:   "remove NODE_ID --target LEADER [--key KEY]",
		Short: "Remove a node from the Raft voters, and with --key from the validators",
		Long: `Remove the node from the Raft configuration through the leader's engine;
with --key, first seal the removal of its validator key into the chain. The
engine refuses to remove the last validator or the leader's own key.`,
		Example: `  lucidctl maintenance voters remove lucid-blockchain-engine-pi2 --key 'lucid-pi2+1a2b3c4d+AX...' --target pi`,
		Args:    cli.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.ID = args[0]
			return runVoters(cmd.Context(), opts)
		},
	}
	opts.Flags.add(cmd.Flags())
	cmd.Flags().StringVar(&opts.Key, "key", "", "also remove this validator key from the chain")
	return cli.SupportsJSON(cmd)
}

func runVoters(ctx context.Context, opts *VotersOptions) error {
	if opts.action != "" {
		// A change is the cluster's, made through one node: the leader.
		cfg, err := opts.Env.Config()
		if err != nil {
			return err
		}
		if _, err := opts.Flags.One(cfg, "voters are the whole chain's: name the leader"); err != nil {
			return err
		}
	}
	// The trail names the node a change was for, where it was added and
	// which validator key went with it.
	audit := []string{actionVotersList}
	switch opts.action {
	case actionVoterAdd:
		audit = hostservices.VoterAddAudit(engineapi.AddVoterRequest{ID: opts.ID, Address: opts.Address, Key: opts.Key})
	case actionVoterRemove:
		audit = hostservices.VoterRemoveAudit(opts.ID, opts.Key)
	}
	out, err := each(ctx, opts.Env, &opts.Flags, audit, func(ctx context.Context, s *session) (*engineapi.ConsensusStatus, error) {
		switch opts.action {
		case actionVoterAdd:
			s.Say("sealing validator key of %s, then adding it as a voter at %s", opts.ID, opts.Address)
			if err := s.AddVoter(ctx, shortRequest, engineapi.AddVoterRequest{ID: opts.ID, Address: opts.Address, Key: opts.Key}); err != nil {
				return nil, notLeaderHint(err)
			}
		case actionVoterRemove:
			if opts.Key != "" {
				s.Say("sealing the removal of %s's validator key, then removing it from the voters", opts.ID)
			} else {
				s.Say("removing %s from the voters", opts.ID)
			}
			st, err := s.RemoveVoter(ctx, shortRequest, opts.ID, opts.Key)
			if err != nil {
				return nil, notLeaderHint(err)
			}
			return st, nil
		}
		eng, err := s.Engine(ctx, shortRequest)
		if err != nil {
			return nil, err
		}
		return eng.Consensus(ctx)
	})
	if out == nil {
		return err
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[engineapi.ConsensusStatus]) {
		st := h.Result
		w := opts.Env.IO.Out
		fmt.Fprintf(w, "%s: node %s, %s, leader %s, term %d, height %d\n", h.Host, st.NodeID, st.State, st.LeaderID, st.Term, st.Height)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ID\tADDRESS\tVOTER\tLEADER")
		for _, sv := range st.Servers {
			leader := ""
			if sv.ID == st.LeaderID {
				leader = "*"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%t\t%s\n", sv.ID, sv.Address, sv.Voter, leader)
		}
		_ = tw.Flush() // w is stdout: a failed write is reported by Execute
	}); perr != nil {
		return perr
	}
	return err
}

// notLeaderHint says where to go when the host's engine is not the
// leader.
func notLeaderHint(err error) error {
	if hostservices.NotLeader(err) {
		return cli.WithHint(err, "run it with --target naming the leader's host (`lucidctl maintenance voters list` shows the leader)")
	}
	return err
}
