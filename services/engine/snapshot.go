package engine

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	servicecopy "github.com/pickme/lucid/pkg/snapshot"
)

// takeSnapshot copies the engine's state for a backup while it keeps
// producing blocks. In order:
//
//   - the Raft snapshots already complete (snapshots/<id>/), listed first
//     and hard-linked later: each covers only blocks applied before the
//     chain store is copied, so the copy never claims a block its chain.db
//     lacks;
//   - chain.db, from one read transaction, which the facts describe;
//   - guard.db, the blocks this node signed;
//   - raft.db, rebuilt from the Raft log and stable store as they are
//     after the chain store was copied, so it holds every block chain.db
//     does (the engine skips the entries it has already applied);
//   - validator.key and validator.pub, the node's identity.
//
// Not included: Raft snapshots still being written (*.tmp), and the
// snapshot directory itself. raft-boltdb does not expose its database, so
// raft.db is written entry by entry through the log store's own API.
func (a *App) takeSnapshot(ctx context.Context, dir string) (*servicecopy.Copy, error) {
	n := a.node
	raftSnaps, err := completeRaftSnapshots(filepath.Join(n.cfg.DataDir, "snapshots"))
	if err != nil {
		return nil, err
	}
	head, err := n.store.CopyTo(filepath.Join(dir, "chain.db"))
	if err != nil {
		return nil, err
	}
	facts := &snapshotapi.ChainFacts{ChainID: n.cfg.ChainID, ValidatorKey: n.vkey}
	if head != nil {
		facts.Height, facts.TreeSize, facts.Root = head.Height, head.TreeSize, base64.StdEncoding.EncodeToString(head.Root)
	}
	err = servicecopy.CopyBolt(n.guard.db, filepath.Join(dir, "guard.db"), func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketSigned).Cursor().Last(); len(k) == 8 {
			facts.SignedHeight = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("copy the signing guard: %w", err)
	}
	snapIndex, err := linkRaftSnapshots(filepath.Join(n.cfg.DataDir, "snapshots"), filepath.Join(dir, "snapshots"), raftSnaps)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	first, err := copyRaftLog(ctx, n.raftDB, filepath.Join(dir, "raft.db"))
	if err != nil {
		return nil, err
	}
	if first > snapIndex+1 {
		// The log was compacted past the snapshots listed before the copy
		// (two Raft snapshots in between): the copy would have a hole.
		return nil, fmt.Errorf("the Raft log was compacted while it was copied (it starts at %d, the snapshots end at %d); take the snapshot again", first, snapIndex)
	}
	for _, name := range []string{"validator.key", "validator.pub"} {
		if err := copyKeyFile(filepath.Join(n.cfg.DataDir, name), filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	return &servicecopy.Copy{Facts: snapshotapi.Facts{Chain: facts}}, nil
}

// completeRaftSnapshots lists the Raft snapshots in dir that are complete.
func completeRaftSnapshots(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("raft snapshots: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// linkRaftSnapshots hard-links the Raft snapshots names (complete and never
// changed again) from src into dst, skipping any Raft has reaped since,
// and returns the highest log index they cover.
func linkRaftSnapshots(src, dst string, names []string) (uint64, error) {
	var highest uint64
	for _, name := range names {
		meta, err := os.ReadFile(filepath.Join(src, name, "meta.json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // reaped
		}
		if err != nil {
			return 0, fmt.Errorf("raft snapshot %s: %w", name, err)
		}
		var m struct{ Index uint64 }
		if err := json.Unmarshal(meta, &m); err != nil {
			return 0, fmt.Errorf("raft snapshot %s: %w", name, err)
		}
		if err := os.MkdirAll(filepath.Join(dst, name), 0o700); err != nil {
			return 0, err
		}
		linked := true
		for _, f := range []string{"meta.json", "state.bin"} {
			err := os.Link(filepath.Join(src, name, f), filepath.Join(dst, name, f))
			if errors.Is(err, fs.ErrNotExist) {
				linked = false
				break
			}
			if err != nil {
				return 0, fmt.Errorf("raft snapshot %s: %w", name, err)
			}
		}
		if !linked { // reaped halfway: leave none of it
			if err := os.RemoveAll(filepath.Join(dst, name)); err != nil {
				return 0, err
			}
			continue
		}
		highest = max(highest, m.Index)
	}
	return highest, nil
}

// raftStableKeys are the keys hashicorp/raft keeps in its stable store:
// the current term and the vote.
var raftStableKeys = []string{"CurrentTerm", "LastVoteTerm", "LastVoteCand"}

// copyRaftLog writes the entries of src's log, and then its stable keys
// (so the term is at least that of every entry copied), into a new store
// at path, and returns the first index copied (0 for an empty log).
func copyRaftLog(ctx context.Context, src *raftboltdb.BoltStore, path string) (uint64, error) {
	// The copy is read back at once by the backup; a crash loses it anyway.
	dst, err := raftboltdb.New(raftboltdb.Options{Path: path, NoSync: true})
	if err != nil {
		return 0, fmt.Errorf("raft log copy: %w", err)
	}
	first, err := copyRaftEntries(ctx, src, dst)
	if err == nil {
		for _, k := range raftStableKeys {
			v, gerr := src.Get([]byte(k))
			if errors.Is(gerr, raftboltdb.ErrKeyNotFound) {
				continue
			}
			if gerr != nil {
				err = gerr
				break
			}
			if err = dst.Set([]byte(k), v); err != nil {
				break
			}
		}
	}
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("raft log copy: %w", err)
	}
	return first, nil
}

func copyRaftEntries(ctx context.Context, src, dst *raftboltdb.BoltStore) (uint64, error) {
	last, err := src.LastIndex()
	if err != nil {
		return 0, err
	}
	first, err := src.FirstIndex()
	if err != nil || last == 0 {
		return 0, err
	}
	var batch []*raft.Log
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.StoreLogs(batch)
		batch, size = nil, 0
		return err
	}
	copied := uint64(0)
	for i := first; i <= last; i++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		l := new(raft.Log)
		if err := src.GetLog(i, l); errors.Is(err, raft.ErrLogNotFound) && copied == 0 {
			first = i + 1 // compacted at the front meanwhile
			continue
		} else if err != nil {
			return 0, fmt.Errorf("entry %d: %w", i, err)
		}
		copied++
		batch = append(batch, l)
		if size += len(l.Data); size >= 64<<20 || len(batch) >= 1024 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if copied == 0 {
		return 0, nil
	}
	return first, flush()
}

// copyKeyFile copies a small key file with its permission bits.
func copyKeyFile(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("validator key: %w", err)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("validator key: %w", err)
	}
	if err := os.WriteFile(dst, data, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("validator key copy: %w", err)
	}
	return nil
}
