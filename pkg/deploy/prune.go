package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/sshx"
)

// PruneOptions say what Prune keeps.
type PruneOptions struct {
	// Keep is how many of the newest releases stay (default Config's
	// KeepReleases). The current release and the one a rollback returns
	// to stay regardless.
	Keep int
	// DryRun lists what would go and removes nothing.
	DryRun bool
}

// PruneKind is what a pruned item is.
type PruneKind string

// The kinds of pruned items; the strings are part of --json.
const (
	PruneRelease   PruneKind = "release"
	PruneImage     PruneKind = "image"
	PruneDangling  PruneKind = "dangling_image"
	PruneContainer PruneKind = "container"
)

// PruneItem is one thing Prune removed (or would remove) and the bytes it
// frees: for an image, the bytes no other image shares.
type PruneItem struct {
	Kind  PruneKind `json:"kind"`
	Name  string    `json:"name"`
	Bytes int64     `json:"bytes"`
	// Error says why it stayed, when it could not be removed.
	Error string `json:"error,omitempty"`
}

// PruneResult is what Prune did on a host.
type PruneResult struct {
	Target string `json:"target"`
	DryRun bool   `json:"dry_run"`
	// Kept are the releases that stay, newest first.
	Kept  []string    `json:"kept"`
	Items []PruneItem `json:"items"`
	// TotalBytes is the sum of the items' bytes (of those removed).
	TotalBytes int64 `json:"total_bytes"`
	// AuditError says the prune is missing from the host's audit log.
	AuditError string `json:"audit_error,omitempty"`
}

// Prune frees the host's disk under the deploy lock: releases beyond the
// newest o.Keep (never the current one, nor the previous one that went
// live, which a rollback returns to, nor one a running container runs
// from), Lucid images no kept release uses
// (by image ID, so a kept release's images stay whatever their tags),
// dangling Lucid image layers older than an hour (a younger one may be a
// build's step in progress), and stopped Lucid containers of releases
// that are not current (a service stopped with Stop stays, for Start). An
// item that cannot be removed is listed with its error and makes Prune
// fail once everything else was tried.
func (d *Deployer) Prune(ctx context.Context, o PruneOptions) (res *PruneResult, pruneErr error) {
	name, h := d.cfg.Name, d.h
	if o.Keep <= 0 {
		o.Keep = d.cfg.KeepReleases
	}
	if !o.DryRun {
		held, release, err := d.holdLock(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
		ctx = held
		defer func() { pruneErr = lockLost(held, pruneErr) }()
		defer func() {
			e := AuditEntry{Action: AuditPrune, Args: []string{"--keep=" + strconv.Itoa(o.Keep)}}
			if res != nil {
				e.Release = strings.Join(res.Kept, ",")
			}
			pruneErr = d.auditOutcome(ctx, e, pruneErr, func(msg string) { res.AuditError = msg })
		}()
	}
	rs, err := h.releases(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", name, err)
	}
	out := &PruneResult{Target: name, DryRun: o.DryRun, Items: []PruneItem{}, Kept: []string{}}
	list, err := h.projectContainers(ctx)
	if err != nil {
		return nil, err
	}
	kept := h.alwaysKept(rs, list)
	_, cur := pickRollback(rs, "")
	keepIDs := map[string]bool{} // image IDs a kept release needs
	keepTags := map[string]bool{}
	var gone []Release
	for i, r := range rs {
		if i < o.Keep || kept(r) {
			out.Kept = append(out.Kept, r.ID)
			for _, id := range r.Images {
				keepIDs[id] = true
			}
			continue
		}
		gone = append(gone, r)
	}
	if len(rs) > 0 && cur == nil {
		// Without current, which release the host runs is unknown: keep
		// what its containers use, and say so.
		d.emit(StepPrune, EventWarn, "no current release: keeping every image a container uses")
	}
	repos := map[string]bool{}
	for _, s := range catalog.Services {
		ref := deployfiles.Image(d.cfg.ImageName, d.cfg.Tag, s)
		repos[repoOf(ref)] = true
		for _, r := range out.Kept {
			keepTags[releaseTag(ref, r)] = true
		}
	}

	var failed []error
	add := func(it PruneItem, remove func() error) {
		if !o.DryRun {
			if err := remove(); err != nil {
				it.Error = err.Error()
				failed = append(failed, fmt.Errorf("%s %s: %w", it.Kind, it.Name, err))
				d.emit(StepPrune, EventWarn, fmt.Sprintf("%s %s stays: %v", it.Kind, it.Name, err))
			}
		}
		if it.Error == "" {
			out.TotalBytes += it.Bytes
			if !o.DryRun {
				d.emit(StepPrune, EventInfo, fmt.Sprintf("removed %s %s (%d bytes)", it.Kind, it.Name, it.Bytes))
			}
		}
		out.Items = append(out.Items, it)
	}

	// Containers first: an image a stopped container uses cannot go.
	curDir := ""
	if cur != nil {
		curDir = h.releaseDir(cur.ID)
	}
	usedImages := map[string]bool{}
	for _, c := range list {
		wd := c.Labels["com.docker.compose.project.working_dir"]
		// A stopped container of the current release stays for Start: it
		// is known by its project directory and, should that be spelt
		// otherwise (a symlink resolved), by an image a kept release runs.
		stale := !live(c) && !keepIDs[c.ImageID] &&
			(curDir == "" && c.Labels["com.docker.compose.oneoff"] == "True" || curDir != "" && wd != curDir && !strings.HasPrefix(wd, curDir+"/"))
		if !stale {
			usedImages[c.ImageID] = true
			continue
		}
		var size int64
		if in, _, err := h.docker.ContainerInspectWithRaw(ctx, c.ID, true); err == nil && in.SizeRw != nil {
			size = *in.SizeRw
		}
		add(PruneItem{Kind: PruneContainer, Name: strings.TrimPrefix(strings.Join(c.Names, ","), "/"), Bytes: size}, func() error {
			return h.docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{RemoveVolumes: false})
		})
	}

	for _, r := range gone {
		var kb int64
		if s, err := h.run(ctx, "du -sk "+sshx.Quote(h.releaseDir(r.ID))+" | cut -f1"); err == nil {
			kb, _ = strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		}
		add(PruneItem{Kind: PruneRelease, Name: r.ID, Bytes: kb * 1024}, func() error {
			_, err := h.run(ctx, "rm -rf -- "+sshx.Quote(h.releaseDir(r.ID)))
			return err
		})
	}

	images, err := h.docker.ImageList(ctx, image.ListOptions{SharedSize: true})
	if err != nil {
		return nil, fmt.Errorf("%s: docker images: %w", name, err)
	}
	for _, img := range images {
		var ours []string
		for _, t := range img.RepoTags {
			if repos[repoOf(t)] {
				ours = append(ours, t)
			}
		}
		if len(ours) == 0 {
			continue
		}
		if keepIDs[img.ID] || usedImages[img.ID] || slices.ContainsFunc(ours, func(t string) bool { return keepTags[t] }) {
			// Kept; a pruned release's own tag on it goes (no bytes).
			for _, t := range ours {
				if !o.DryRun && strings.Contains(t, ":lucid-") && !keepTags[t] {
					if _, err := h.docker.ImageRemove(ctx, t, image.RemoveOptions{}); err != nil {
						d.emit(StepPrune, EventWarn, fmt.Sprintf("tag %s stays: %v", t, err))
					}
				}
			}
			continue
		}
		size := img.Size
		if img.SharedSize >= 0 {
			size -= img.SharedSize
		}
		slices.Sort(ours)
		add(PruneItem{Kind: PruneImage, Name: strings.Join(ours, ","), Bytes: size}, func() error {
			// Only its tags, never forced: the last one removes the image,
			// and an image something still uses stays with the error.
			if len(img.RepoTags) != len(ours) {
				return fmt.Errorf("tagged also as %s, which is not Lucid's", strings.Join(slices.DeleteFunc(slices.Clone(img.RepoTags), func(t string) bool { return repos[repoOf(t)] }), ", "))
			}
			for _, t := range ours {
				if _, err := h.docker.ImageRemove(ctx, t, image.RemoveOptions{PruneChildren: true}); err != nil {
					return err
				}
			}
			return nil
		})
	}

	dangling, err := h.docker.ImageList(ctx, image.ListOptions{SharedSize: true, Filters: filters.NewArgs(filters.Arg("dangling", "true"), filters.Arg("label", lucidImageLabel))})
	if err != nil {
		return nil, fmt.Errorf("%s: docker images: %w", name, err)
	}
	cutoff := d.cfg.Now().Add(-danglingGrace).Unix() // one clock read for the whole list
	for _, img := range dangling {
		if keepIDs[img.ID] || usedImages[img.ID] || img.Created > cutoff {
			continue
		}
		size := img.Size
		if img.SharedSize >= 0 {
			size -= img.SharedSize
		}
		add(PruneItem{Kind: PruneDangling, Name: img.ID, Bytes: size}, func() error {
			_, err := h.docker.ImageRemove(ctx, img.ID, image.RemoveOptions{PruneChildren: true})
			return err
		})
	}
	if len(failed) > 0 {
		return out, fmt.Errorf("%s: prune: %w", name, errors.Join(failed...))
	}
	return out, nil
}

// danglingGrace is how old a dangling Lucid image must be before Prune
// removes it: the Docker builder's intermediate images are dangling while
// the build runs, and removing one fails that build.
const danglingGrace = time.Hour

// lucidImageLabel marks the images imagebuild makes.
const lucidImageLabel = "io.lucid.service"

// repoOf is ref without its tag.
func repoOf(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}
