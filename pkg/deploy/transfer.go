package deploy

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TransferImage is one service's image to put on the host, under these
// tags.
type TransferImage struct {
	Service string
	Image   v1.Image
	Tags    []string
}

// TransferPlan is what a load will send.
type TransferPlan struct {
	Images []TransferImage
	// Send are the layers the host lacks, each once; the rest it has.
	Send       []v1.Layer
	SendBytes  int64
	KeptLayers int
	// Full means the host's image store cannot skip layers it has (the
	// containerd store), so every layer is sent.
	Full bool
}

// planTransfer asks the host's Docker Engine which layers it already has
// (by chain ID, over every image it holds) and keeps only the others.
func planTransfer(ctx context.Context, dc *client.Client, images []TransferImage) (*TransferPlan, error) {
	info, err := dc.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker info: %w", err)
	}
	plan := &TransferPlan{Images: images}
	have := map[string]bool{}
	// The classic store loads a layer only when its chain ID is missing;
	// the containerd store imports blobs and needs them all.
	for _, kv := range info.DriverStatus {
		if strings.Contains(kv[1], "io.containerd.snapshotter") {
			plan.Full = true
		}
	}
	if !plan.Full {
		list, err := dc.ImageList(ctx, image.ListOptions{All: true})
		if err != nil {
			return nil, fmt.Errorf("docker image ls: %w", err)
		}
		for _, s := range list {
			in, err := dc.ImageInspect(ctx, s.ID)
			if err != nil {
				continue // removed meanwhile
			}
			for _, c := range chainIDs(in.RootFS.Layers) {
				have[c] = true
			}
		}
	}
	// A blob is sent when any image needs it (its chain there is missing),
	// once.
	need := map[v1.Hash]bool{}
	var order []v1.Layer
	for _, ti := range images {
		cf, err := ti.Image.ConfigFile()
		if err != nil {
			return nil, err
		}
		layers, err := ti.Image.Layers()
		if err != nil {
			return nil, err
		}
		var diffIDs []string
		for _, d := range cf.RootFS.DiffIDs {
			diffIDs = append(diffIDs, d.String())
		}
		chains := chainIDs(diffIDs)
		for i, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return nil, err
			}
			if _, known := need[d]; !known {
				order = append(order, l)
			}
			need[d] = need[d] || !have[chains[i]]
		}
	}
	for _, l := range order {
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		if !need[d] {
			plan.KeptLayers++
			continue
		}
		size, err := l.Size()
		if err != nil {
			return nil, err
		}
		plan.Send = append(plan.Send, l)
		plan.SendBytes += size
	}
	return plan, nil
}

// chainIDs are the chain IDs of a layer stack: the first is its diff ID,
// each next is sha256("<previous> <diff ID>").
func chainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}

// writeTarball writes a `docker load` archive (manifest.json, configs,
// layers) that holds only the plan's layers: the Engine skips reading the
// others, which it has.
func (p *TransferPlan) writeTarball(w io.Writer) error {
	tw := tar.NewWriter(w)
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var manifest []entry
	wrote := map[string]bool{}
	add := func(name string, size int64, r io.Reader) error {
		if wrote[name] {
			return nil
		}
		wrote[name] = true
		if err := tw.WriteHeader(&tar.Header{Name: name, Size: size, Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	send := map[v1.Hash]bool{}
	for _, l := range p.Send {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		send[d] = true
	}
	for _, ti := range p.Images {
		raw, err := ti.Image.RawConfigFile()
		if err != nil {
			return err
		}
		cd, err := ti.Image.ConfigName()
		if err != nil {
			return err
		}
		e := entry{Config: cd.Hex + ".json", RepoTags: ti.Tags}
		if err := add(e.Config, int64(len(raw)), strings.NewReader(string(raw))); err != nil {
			return err
		}
		layers, err := ti.Image.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			name := d.Hex + ".tar.gz"
			e.Layers = append(e.Layers, name)
			if !send[d] && !p.Full {
				continue // the host has it
			}
			size, err := l.Size()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			err = add(name, size, rc)
			rc.Close()
			if err != nil {
				return err
			}
		}
		manifest = append(manifest, e)
	}
	mj, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	if err := add("manifest.json", int64(len(mj)), strings.NewReader(string(mj))); err != nil {
		return err
	}
	return tw.Close()
}

// load streams the plan into the host's Engine and returns the bytes
// sent; progress hears the count as it grows (from another goroutine).
func (p *TransferPlan) load(ctx context.Context, dc *client.Client, progress func(sent int64)) (int64, error) {
	pr, pw := io.Pipe()
	// Closing unblocks the writer if the Engine stops reading; a pipe's
	// Close never fails.
	defer func() { _ = pr.Close() }()
	done := make(chan int64, 1)
	go func() {
		cw := &countingWriter{w: pw, report: progress}
		pw.CloseWithError(p.writeTarball(cw))
		done <- cw.n
	}()
	resp, err := dc.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		<-done
		return 0, fmt.Errorf("docker load: %w", err)
	}
	err = jsonStreamError(resp.Body)
	resp.Body.Close()
	_ = pr.Close()
	sent := <-done
	if err != nil {
		return sent, fmt.Errorf("docker load: %w", err)
	}
	return sent, nil
}

type countingWriter struct {
	w      io.Writer
	n      int64
	report func(int64)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	if c.report != nil {
		c.report(c.n)
	}
	return n, err
}
