package imagebuild

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Row is one line of the build summary.
type Row struct {
	Image    string `json:"image"`
	Platform string `json:"platform"` // "index" for a multi-platform index
	// Digest is the manifest digest a registry will show (empty for the
	// docker builder, whose images have only a local ID).
	Digest string `json:"digest,omitempty"`
	// ID is the Docker Engine's image ID (docker builder only).
	ID   string `json:"id,omitempty"`
	Size int64  `json:"size"` // the daemonless builder: compressed layers and config; docker: as the Engine reports
}

// Summary lists every image (and index) built.
func Summary(built []Built) ([]Row, error) {
	var rows []Row
	for _, b := range built {
		for _, pi := range b.Images {
			d, err := pi.Image.Digest()
			if err != nil {
				return nil, err
			}
			size, err := imageSize(pi.Image)
			if err != nil {
				return nil, err
			}
			rows = append(rows, Row{Image: b.Ref, Platform: pi.Platform.String(), Digest: d.String(), Size: size})
		}
		if b.Index != nil {
			d, err := b.Index.Digest()
			if err != nil {
				return nil, err
			}
			rows = append(rows, Row{Image: b.Ref, Platform: "index", Digest: d.String()})
		}
	}
	return rows, nil
}

func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

// WriteLayout adds the images to an OCI image layout directory, each
// annotated with its reference.
func WriteLayout(ctx context.Context, dir string, built []Built) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("OCI layout %s: %w", dir, err)
		}
	}
	for _, b := range built {
		if err := ctx.Err(); err != nil {
			return err
		}
		ann := layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": b.Ref})
		if b.Index != nil {
			err = p.ReplaceIndex(b.Index, match(b.Ref), ann)
		} else {
			err = p.ReplaceImage(b.Images[0].Image, match(b.Ref), ann)
		}
		if err != nil {
			return fmt.Errorf("OCI layout %s: %s: %w", dir, b.Ref, err)
		}
	}
	return nil
}

// match selects the layout entry of a reference, so a rebuild replaces it.
func match(ref string) func(v1.Descriptor) bool {
	return func(d v1.Descriptor) bool { return d.Annotations["org.opencontainers.image.ref.name"] == ref }
}

// ErrTarballPlatforms refuses a `docker load` tarball of several platforms.
var ErrTarballPlatforms = errors.New("a docker load tarball holds one platform per tag; build it with a single --platform")

// WriteTarball writes the images as one tarball that `docker load` reads.
func WriteTarball(ctx context.Context, file string, built []Built) error {
	refs := map[name.Reference]v1.Image{}
	for _, b := range built {
		if len(b.Images) != 1 {
			return ErrTarballPlatforms
		}
		tag, err := name.NewTag(b.Ref)
		if err != nil {
			return err
		}
		refs[tag] = b.Images[0].Image
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp := file + ".partial"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		_ = os.Remove(tmp) // a partial file; the write error is the one to report
		return fmt.Errorf("write %s: %w", file, err)
	}
	return os.Rename(tmp, file)
}

// Push sends the images (or indexes) to their registries, with credentials
// from the Docker config. Extra options (a transport, insecure registries)
// go to go-containerregistry.
func Push(ctx context.Context, built []Built, insecure bool, opts ...remote.Option) error {
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	for _, b := range built {
		tag, err := name.NewTag(b.Ref, nameOpts...)
		if err != nil {
			return err
		}
		if b.Index != nil {
			err = remote.WriteIndex(tag, b.Index, opts...)
		} else {
			err = remote.Write(tag, b.Images[0].Image, opts...)
		}
		if err != nil {
			return fmt.Errorf("push %s: %w", b.Ref, err)
		}
	}
	return nil
}
