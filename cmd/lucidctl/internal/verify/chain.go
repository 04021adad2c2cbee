package verify

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/token"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
)

// ChainOptions are the inputs of `lucidctl verify chain`.
type ChainOptions struct {
	Env   *cli.Env
	URL   string
	Token string
	Keys  []string
}

func newChainCmd(env *cli.Env) *cobra.Command {
	opts := &ChainOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "chain [--url URL]",
		Short: "Walk every block of a chain and re-verify it",
		Long: `Fetch every block from an engine and verify the chain from its first block:
signatures, hash links, heights, times, transactions and each block's
Merkle root recomputed from its transactions.

By default the blocks come from the local stack through its gateway
(http://127.0.0.1:8080/blockchain, the port shifted by local.port_offset of
lucid.yaml), which needs a user's token: --token, else $LUCID_TOKEN, else
one minted here for the run from the project's JWT_SECRET_KEY, as
` + "`lucidctl token`" + ` would. The engine itself answers only mesh members when mTLS
is on (the default), so --url names a gateway's /blockchain prefix, or an
engine that runs without mTLS.

With --key the first block must be signed by one of those validators;
without it, the validators the first block declares are trusted (and said
so on stderr).`,
		Example: `  lucidctl verify chain
  lucidctl verify chain --url https://pi.example/blockchain --token "$LUCID_TOKEN"
  lucidctl verify chain --url http://raspberrypi.local:8084    # an engine without mTLS`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runChain(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.URL, "url", "", "the gateway's /blockchain prefix, or an engine's URL (default: the local stack's gateway)")
	cmd.Flags().StringVar(&opts.Token, "token", "", "bearer token to send, for a URL through the gateway (default $LUCID_TOKEN; for the local stack, one minted from its secret)")
	cmd.Flags().StringArrayVar(&opts.Keys, "key", nil, "validator public key the chain must start with (repeatable)")
	return cli.SupportsJSON(cmd)
}

// ChainResult is the --json form of `verify chain`.
type ChainResult struct {
	Valid        bool     `json:"valid"`
	Reason       string   `json:"reason,omitempty"`
	ChainID      string   `json:"chain_id"`
	Blocks       uint64   `json:"blocks"`
	Transactions uint64   `json:"transactions"`
	HeadHash     string   `json:"head_hash,omitempty"`
	Validators   []string `json:"validators"`
	DurationMS   int64    `json:"duration_ms"`
}

func runChain(ctx context.Context, opts *ChainOptions) error {
	if opts.Token == "" { // read here, not as the flag's default, which --help would print
		opts.Token = opts.Env.Getenv("LUCID_TOKEN")
	}
	if _, err := chain.Verifiers(opts.Keys); err != nil {
		return cli.Usage(fmt.Errorf("--key: %w", err))
	}
	local := opts.URL == ""
	if local {
		if err := localGateway(opts); err != nil {
			return err
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	if opts.Token != "" {
		hc.Transport = api.WithBearer(nil, opts.Token)
	}
	client := engineapi.New(opts.URL, hc)
	info, err := client.Chain(ctx)
	if err != nil {
		err = fmt.Errorf("chain info from %s: %w", opts.URL, err)
		if local {
			return cli.WithHint(err, "is the local stack running? `lucidctl status` says; `lucidctl up -d` starts it")
		}
		return err
	}
	if len(opts.Keys) == 0 {
		fmt.Fprintln(opts.Env.IO.ErrOut, "no --key given: trusting the validators the first block declares")
	}
	start := time.Now()
	res := ChainResult{Valid: true, ChainID: info.ChainID}
	a := chain.NewAuditor(chain.Origin(info.ChainID), opts.Keys)

	// Fetch ahead with a few workers; verify strictly in order.
	const ahead = 8
	type fetched struct {
		b   *chain.Block
		err error
	}
	queue := make(chan chan fetched, ahead)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(queue)
		for h := uint64(1); h <= info.Height; h++ {
			ch := make(chan fetched, 1)
			select {
			case queue <- ch:
			case <-fctx.Done():
				return
			}
			go func(h uint64) {
				b, err := client.Block(fctx, h)
				ch <- fetched{b, err}
			}(h)
		}
	}()
	progress := time.Now()
	for ch := range queue {
		f := <-ch
		if f.err != nil {
			return fmt.Errorf("fetch block %d: %w", res.Blocks+1, f.err)
		}
		if err := a.Next(f.b); err != nil {
			res.Valid, res.Reason = false, err.Error()
			break
		}
		res.Blocks++
		if time.Since(progress) > time.Second {
			fmt.Fprintf(opts.Env.IO.ErrOut, "verified %d/%d blocks, %d transactions\n", res.Blocks, info.Height, a.Txs)
			progress = time.Now()
		}
	}
	cancel()
	res.Transactions, res.DurationMS = a.Txs, time.Since(start).Milliseconds()
	if h := a.Head(); h != nil {
		res.HeadHash = h.Hash()
	}
	res.Validators = info.Validators
	if done, err := verdict(opts.Env, res, res.Valid, "chain", res.Reason); done {
		return err
	}
	fmt.Fprintf(opts.Env.IO.Out, "%s %d blocks, %d transactions, head %s (%s)\n",
		opts.Env.IO.OutStyles().Success.Render("chain OK:"), res.Blocks, res.Transactions, res.HeadHash, time.Duration(res.DurationMS)*time.Millisecond)
	return nil
}

// localTokenTTL bounds the token minted for one run against the local
// stack.
const localTokenTTL = 15 * time.Minute

// localGateway points opts at the local stack's gateway, with a token
// minted from the project's secret when none was given. The token is of
// the enterprise tier: an audit reads every block, and the tier's budget
// is what lets a long chain through without waiting on rate limits.
func localGateway(opts *ChainOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	gw, _ := catalog.Lookup(catalog.GatewayService)
	opts.URL = "http://127.0.0.1:" + strconv.Itoa(gw.Port+cfg.Local.PortOffset) + "/blockchain"
	if opts.Token != "" {
		return nil
	}
	tok, err := token.Local(opts.Env, "lucidctl-verify", auth.TierEnterprise, localTokenTTL)
	if err != nil {
		return cli.WithHint(fmt.Errorf("a token for the local gateway: %w", err),
			"give one with --token or $LUCID_TOKEN, or name an engine with --url")
	}
	opts.Token = tok
	return nil
}
