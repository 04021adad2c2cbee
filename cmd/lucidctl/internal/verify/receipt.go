package verify

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/chain"
)

// ReceiptOptions are the inputs of `lucidctl verify receipt`.
type ReceiptOptions struct {
	Env     *cli.Env
	File    string
	Keys    []string
	ChainID string
}

func newReceiptCmd(env *cli.Env) *cobra.Command {
	opts := &ReceiptOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "receipt FILE --key PUBKEY",
		Short: "Check an anchor receipt offline",
		Long: `Check an anchor receipt (a c2sp.org/tlog-proof@v1 file) without any server:
the checkpoint's signature against the validator key(s), the transaction's
canonical form, and the Merkle inclusion proof against the checkpoint's root.

FILE may be - for standard input. --key takes a validator public key
(name+hash+key, as in the engine's /api/v1/chain "validators"); repeat it for
several validators.`,
		Example: `  lucidctl verify receipt session.tlog-proof --key lucid-pi+1a2b3c4d+AfK...`,
		Args:    cli.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cli.RequireFlag(cmd, "key"); err != nil {
				return err
			}
			opts.File = args[0]
			return runReceipt(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Keys, "key", nil, "validator public key (repeatable)")
	cmd.Flags().StringVar(&opts.ChainID, "chain-id", "", "require the receipt to be from this chain (lucid.chain/<id>)")
	return cli.SupportsJSON(cmd)
}

// ReceiptResult is the --json form of `verify receipt`.
type ReceiptResult struct {
	Valid     bool      `json:"valid"`
	Reason    string    `json:"reason,omitempty"`
	TxID      string    `json:"tx_id,omitempty"`
	SessionID string    `json:"session_id,omitempty"`
	Height    uint64    `json:"height,omitempty"`
	BlockHash string    `json:"block_hash,omitempty"`
	Index     uint64    `json:"index,omitempty"`
	TreeSize  uint64    `json:"tree_size,omitempty"`
	Time      time.Time `json:"time,omitzero"`
	Signer    string    `json:"signer,omitempty"`
}

func runReceipt(_ context.Context, opts *ReceiptOptions) error {
	vs, err := chain.Verifiers(opts.Keys)
	if err != nil {
		return cli.Usage(fmt.Errorf("--key: %w", err))
	}
	var data []byte
	if opts.File == "-" {
		data, err = io.ReadAll(io.LimitReader(opts.Env.IO.In, 1<<20))
	} else {
		data, err = os.ReadFile(opts.File)
	}
	if err != nil {
		return fmt.Errorf("read receipt: %w", err)
	}
	res := ReceiptResult{Valid: true}
	origin := ""
	if opts.ChainID != "" {
		origin = chain.Origin(opts.ChainID)
	}
	v, verr := chain.VerifyReceipt(data, vs, origin)
	if verr != nil {
		res = ReceiptResult{Valid: false, Reason: verr.Error()}
	} else {
		res.TxID, res.Height, res.BlockHash, res.Index = v.TxID, v.Header.Height, v.Header.Hash(), v.Index
		res.TreeSize, res.Time, res.Signer = v.Header.TreeSize, v.Header.Time, v.Header.Proposer
		if v.Tx.Anchor != nil {
			res.SessionID = v.Tx.Anchor.SessionID
		}
	}
	if done, err := verdict(opts.Env, res, res.Valid, "receipt", res.Reason); done {
		return err
	}
	st := opts.Env.IO.OutStyles()
	fmt.Fprintf(opts.Env.IO.Out, "%s transaction %s\n", st.Success.Render("receipt OK:"), res.TxID)
	if res.SessionID != "" {
		fmt.Fprintf(opts.Env.IO.Out, "  session   %s\n", res.SessionID)
	}
	fmt.Fprintf(opts.Env.IO.Out, "  block     %d (%s) at %s, signed by %s\n", res.Height, res.BlockHash, res.Time.Format(time.RFC3339), res.Signer)
	fmt.Fprintf(opts.Env.IO.Out, "  leaf      %d of %d\n", res.Index, res.TreeSize)
	return nil
}
