package restore

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/chain"
)

// clients reach a stack's services with the operator credential
// (maintenance.Services).
type clients interface {
	Client(ctx context.Context, service string, timeout time.Duration) (*http.Client, string, error)
}

// Check is one verification after a restore.
type Check struct {
	// Name is chain_facts, chain_audit, datachain_scrub, datachain_facts
	// or receipt.
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Receipt statuses.
const (
	// ReceiptInChain: the restored chain holds its block, and its proof
	// leads to that block's root.
	ReceiptInChain = "in_restored_chain"
	// ReceiptAfterBackup: it verifies with the validators' keys, but its
	// block is above the restored height: blocks were signed after the
	// backup, which the fence keeps from being signed again differently.
	ReceiptAfterBackup = "after_backup"
	// ReceiptInvalid: it is not the restored chain's and does not verify
	// with the validators' keys.
	ReceiptInvalid = "invalid"
	// ReceiptForked: it verifies, but the restored chain's block at its
	// height is another one.
	ReceiptForked = "forked"
)

// ReceiptCheck is one --receipt's verdict.
type ReceiptCheck struct {
	File   string `json:"file"`
	Status string `json:"status"`
	TxID   string `json:"tx_id,omitempty"`
	Height uint64 `json:"height,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Verification is what the checks after a restore found.
type Verification struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
	// Restored are the restored stack's figures, beside the backup's.
	Restored RestoredFacts  `json:"restored"`
	Receipts []ReceiptCheck `json:"receipts"`
}

// RestoredFacts are the running stack's figures after a restore.
type RestoredFacts struct {
	ChainHeight    uint64 `json:"chain_height"`
	ChainRoot      string `json:"chain_root,omitempty"`
	ValidatorKey   string `json:"validator_key,omitempty"`
	DataChainChunk int    `json:"datachain_chunks"`
	Sessions       int    `json:"datachain_sessions"`
}

func (v *Verification) add(name string, ok bool, format string, args ...any) {
	v.Checks = append(v.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	if !ok {
		v.OK = false
	}
}

// backupFacts collects the facts of a backup's manifests.
func backupFacts(src Source) snapshotapi.Facts {
	var f snapshotapi.Facts
	for _, m := range src.Services() {
		if m.Facts.Chain != nil {
			f.Chain = m.Facts.Chain
		}
		if m.Facts.DataChain != nil {
			f.DataChain = m.Facts.DataChain
		}
	}
	return f
}

// verify checks the restored stack against the backup's facts: the chain
// (height, root at the backup's height, validator key), the block
// manager's audit of the whole chain, a data-chain scrub and its counts,
// and each receipt.
func verify(ctx context.Context, cl clients, facts snapshotapi.Facts, receipts []string, say func(string, ...any)) (*Verification, error) {
	v := &Verification{OK: true, Receipts: []ReceiptCheck{}}
	ehc, ebase, err := cl.Client(ctx, "engine", 30*time.Second)
	if err != nil {
		return nil, err
	}
	bhc, bbase, err := cl.Client(ctx, "blocks", 0)
	if err != nil {
		return nil, err
	}
	blocks := engineapi.New(bbase, bhc) // the block manager serves blocks as the engine does
	info, err := engineapi.New(ebase, ehc).Chain(ctx)
	if err != nil {
		return nil, fmt.Errorf("the engine's chain: %w", err)
	}
	v.Restored.ChainHeight, v.Restored.ChainRoot, v.Restored.ValidatorKey = info.Height, info.Root, info.ValidatorKey
	chainID := info.ChainID
	// The restored chain's validators, and the backed-up engine's own key:
	// in a cluster another validator may have signed a block.
	keys := slices.Clone(info.Validators)
	if info.ValidatorKey != "" && !slices.Contains(keys, info.ValidatorKey) {
		keys = append(keys, info.ValidatorKey)
	}

	if c := facts.Chain; c != nil {
		if !slices.Contains(keys, c.ValidatorKey) {
			keys = append(keys, c.ValidatorKey)
		}
		switch {
		case info.ChainID != c.ChainID:
			v.add("chain_facts", false, "the restored engine runs chain %q, the backup holds %q", info.ChainID, c.ChainID)
		case info.ValidatorKey != c.ValidatorKey:
			v.add("chain_facts", false, "the restored engine signs with another validator key than the backup's")
		case info.Height < c.Height:
			v.add("chain_facts", false, "the restored chain has %d blocks, the backup %d", info.Height, c.Height)
		default:
			root, err := rootAt(ctx, blocks, c.Height)
			switch {
			case err != nil:
				v.add("chain_facts", false, "block %d from the block manager: %v", c.Height, err)
			case root != c.Root:
				v.add("chain_facts", false, "the restored block %d has root %s, the backup's %s", c.Height, root, c.Root)
			default:
				v.add("chain_facts", true, "chain %s at height %d, root %s, as backed up (now height %d)", c.ChainID, c.Height, c.Root, info.Height)
			}
		}
	}

	say("auditing the chain (the block manager re-verifies every block)")
	audit, err := chainAudit(ctx, bhc, bbase)
	switch {
	case err != nil:
		v.add("chain_audit", false, "%v", err)
	case !audit.OK:
		v.add("chain_audit", false, "the audit failed at height %d: %s", audit.Height+1, audit.Reason)
	default:
		v.add("chain_audit", true, "%d blocks, %d transactions verified", audit.Blocks, audit.Transactions)
	}

	dhc, dbase, err := cl.Client(ctx, "datachain", 0)
	if err != nil {
		return nil, err
	}
	dc := datachainapi.New(dbase, dhc)
	say("scrubbing the data chain")
	rep, err := dc.Scrub(ctx)
	switch {
	case err != nil:
		v.add("datachain_scrub", false, "%v", err)
	case len(rep.Damaged) > 0:
		v.add("datachain_scrub", false, "%d of %d chunks damaged (first: %s: %s)", len(rep.Damaged), rep.Chunks, rep.Damaged[0].ID, rep.Damaged[0].Error)
	default:
		v.add("datachain_scrub", true, "%d chunks, %d bytes, no damage", rep.Chunks, rep.Bytes)
	}
	if st, err := dc.Status(ctx); err != nil {
		v.add("datachain_facts", false, "data chain status: %v", err)
	} else {
		v.Restored.DataChainChunk, v.Restored.Sessions = st.Chunks, st.Sessions
		if f := facts.DataChain; f != nil {
			ok := st.Chunks >= f.Chunks && st.Sessions >= f.Sessions
			v.add("datachain_facts", ok, "%d chunks and %d sessions restored, the backup holds %d and %d", st.Chunks, st.Sessions, f.Chunks, f.Sessions)
		}
	}

	for _, file := range receipts {
		rc := checkReceipt(ctx, blocks, file, keys, chainID, info.Height)
		v.Receipts = append(v.Receipts, rc)
		ok := rc.Status == ReceiptInChain || rc.Status == ReceiptAfterBackup
		v.add("receipt", ok, "%s: %s%s", file, rc.Status, detail(rc.Detail))
	}
	return v, nil
}

func detail(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// rootAt is the base64 tree root of the block at height. Its signature is
// the audit's to check (chain_audit), against the validators of its time.
func rootAt(ctx context.Context, blocks *engineapi.Client, height uint64) (string, error) {
	if height == 0 {
		return "", fmt.Errorf("no block at height 0")
	}
	b, err := blocks.Block(ctx, height)
	if err != nil {
		return "", err
	}
	h, err := b.Header()
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(h.Root), nil
}

// auditLine is a line of the block manager's GET /api/v1/chain/verify.
type auditLine struct {
	Done         bool   `json:"done"`
	OK           bool   `json:"ok"`
	Height       uint64 `json:"height"`
	Blocks       uint64 `json:"blocks"`
	Transactions uint64 `json:"transactions"`
	Reason       string `json:"reason,omitempty"`
}

// chainAudit runs the block manager's audit of the whole chain and
// returns its verdict.
func chainAudit(ctx context.Context, hc *http.Client, base string) (*auditLine, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/chain/verify", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the block manager's audit: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the block manager's audit: %w", api.DecodeError(resp))
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("the block manager's audit: %w", err)
		}
		if l.Done {
			return &l, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("the block manager's audit: %w", err)
	}
	return nil, fmt.Errorf("the block manager's audit ended without a verdict")
}

// checkReceipt holds a receipt against the restored chain: in it when its
// checkpoint is the restored block's at its height (whoever signed it, a
// validator removed since included). Otherwise it is checked against the
// validators' keys: a good one above the restored height was signed after
// the backup, one at or below it is of another block (a fork).
func checkReceipt(ctx context.Context, blocks *engineapi.Client, file string, keys []string, chainID string, height uint64) ReceiptCheck {
	rc := ReceiptCheck{File: file}
	data, err := os.ReadFile(file)
	if err != nil {
		rc.Status, rc.Detail = ReceiptInvalid, err.Error()
		return rc
	}
	origin := chain.Origin(chainID)
	at, err := chain.ReceiptHeight(data)
	if err != nil {
		rc.Status, rc.Detail = ReceiptInvalid, err.Error()
		return rc
	}
	var restored *chain.Block
	if at <= height {
		if restored, err = blocks.Block(ctx, at); err != nil {
			rc.Status, rc.Detail = ReceiptForked, fmt.Sprintf("block %d of the restored chain: %v", at, err)
			return rc
		}
		vr, err := chain.VerifyReceiptInChain(data, restored, origin)
		if err == nil {
			rc.TxID, rc.Height, rc.Status = vr.TxID, vr.Header.Height, ReceiptInChain
			return rc
		}
		if !errors.Is(err, chain.ErrNotInChain) {
			rc.Status, rc.Detail = ReceiptInvalid, err.Error()
			return rc
		}
	}
	vs, err := chain.Verifiers(keys)
	if err != nil {
		rc.Status, rc.Detail = ReceiptInvalid, "the validator keys: "+err.Error()
		return rc
	}
	vr, err := chain.VerifyReceipt(data, vs, origin)
	if err != nil {
		rc.Status, rc.Detail = ReceiptInvalid, err.Error()
		return rc
	}
	rc.TxID, rc.Height = vr.TxID, vr.Header.Height
	if restored == nil {
		rc.Status = ReceiptAfterBackup
		rc.Detail = fmt.Sprintf("its block %d is above the restored height %d: blocks were signed after the backup; the engine stays fenced until the operator lifts it", vr.Header.Height, height)
		return rc
	}
	rc.Status, rc.Detail = ReceiptForked, fmt.Sprintf("the restored block %d is %s, the receipt's %s", at, restored.Hash, vr.Header.Hash())
	return rc
}
