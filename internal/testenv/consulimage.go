package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pickme/lucid/pkg/deployfiles"
)

// consulImageFormat changes whenever what ConsulImage puts in the image
// does, so that a cached tarball of the old kind is not used.
const consulImageFormat = "1"

var consulImage struct {
	once sync.Once
	path string
	err  error
}

// ConsulImage returns a `docker save` tarball of an image named
// deployfiles.ConsulImage (hashicorp/consul:1.14.11, which the rendered
// compose file runs), for a Pi's Engine to load (Pi.LoadImage): no
// registry can be pulled from in tests. It holds the consul binary of
// LUCID_CONSUL_BIN (statically linked; stripped of its debug information
// when strip(1) is here, a third smaller), and an entrypoint that does
// what the official image's does with what the compose file gives it:
// CONSUL_LOCAL_CONFIG written to /consul/config/local.json, "agent ..."
// run with /consul/data and /consul/config, any other consul subcommand
// run as one. Unlike the official image it runs Consul as root and
// ignores CONSUL_BIND_INTERFACE and CONSUL_CLIENT_INTERFACE. The shell
// for that entrypoint is this machine's /bin/sh with its libraries.
//
// The tarball is built once per consul binary and kept in the user's
// cache directory (lucid/test-images), as the binary itself is.
func ConsulImage(t testing.TB) string {
	t.Helper()
	bin := Tool(t, "consul", "LUCID_CONSUL_BIN")
	consulImage.once.Do(func() { consulImage.path, consulImage.err = buildConsulImage(bin) })
	if consulImage.err != nil {
		t.Fatalf("consul image: %v", consulImage.err)
	}
	return consulImage.path
}

func buildConsulImage(bin string) (string, error) {
	fi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s %s %d %d %s", consulImageFormat, bin, fi.Size(), fi.ModTime().UnixNano(), runtime.GOARCH))
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "lucid", "test-images")
	out := filepath.Join(dir, "consul-"+hex.EncodeToString(sum[:6])+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(work) }() // a build's leftovers; the tarball is renamed out first
	consul := bin
	if strip, err := exec.LookPath("strip"); err == nil {
		consul = filepath.Join(work, "consul")
		if out, err := exec.Command(strip, "-o", consul, bin).CombinedOutput(); err != nil {
			return "", fmt.Errorf("strip %s: %w: %s", bin, err, out)
		}
	}
	shell, err := shellFiles()
	if err != nil {
		return "", err
	}
	base := []imageFile{
		{name: "consul/data/", mode: 0o755},
		{name: "consul/config/", mode: 0o755},
		{name: "tmp/", mode: 0o1777},
		{name: "usr/local/bin/docker-entrypoint.sh", mode: 0o755, content: []byte(consulEntrypoint)},
	}
	baseLayer, err := imageLayer(append(base, shell...))
	if err != nil {
		return "", err
	}
	consulLayer, err := imageLayer([]imageFile{{name: "bin/consul", mode: 0o755, source: consul}})
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, baseLayer, consulLayer)
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Entrypoint = []string{"docker-entrypoint.sh"}
	cf.Config.Cmd = []string{"agent", "-dev", "-client", "0.0.0.0"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.description": "Consul for Lucid's tests, from LUCID_CONSUL_BIN"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	ref, err := name.NewTag(deployfiles.ConsulImage)
	if err != nil {
		return "", err
	}
	tmp := filepath.Join(work, "image.tar")
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return "", fmt.Errorf("write %s: %w", ref, err)
	}
	// Whole or not at all, for a test process building it at once.
	return out, os.Rename(tmp, out)
}

// consulEntrypoint is the official image's docker-entrypoint.sh, as much
// of it as Lucid's compose file uses.
const consulEntrypoint = `#!/bin/sh
set -e
CONSUL_DATA_DIR=/consul/data
CONSUL_CONFIG_DIR=/consul/config
if [ -n "$CONSUL_LOCAL_CONFIG" ]; then
	echo "$CONSUL_LOCAL_CONFIG" > "$CONSUL_CONFIG_DIR/local.json"
fi
if [ "${1#-}" != "$1" ]; then
	set -- agent "$@"
fi
if [ "$1" = agent ]; then
	shift
	set -- consul agent -data-dir="$CONSUL_DATA_DIR" -config-dir="$CONSUL_CONFIG_DIR" "$@"
elif [ "$1" = version ] || ! command -v "$1" >/dev/null 2>&1; then
	set -- consul "$@"
fi
exec "$@"
`

// imageFile is one entry of a layer: a directory (name ends in /), a
// file with content, or a file copied from source.
type imageFile struct {
	name    string
	mode    int64
	content []byte
	source  string
}

// shellFiles are /bin/sh and the libraries it loads, at the paths it
// loads them from, as ldd(1) says.
func shellFiles() ([]imageFile, error) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("ldd", sh).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", sh, err)
	}
	files := []imageFile{{name: "bin/sh", mode: 0o755, source: sh}}
	for _, line := range strings.Split(string(out), "\n") {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
		f := strings.Fields(line)
		path := ""
		switch {
		case len(f) >= 3 && f[1] == "=>":
			path = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			path = f[0]
		}
		if path == "" {
			continue
		}
		files = append(files, imageFile{name: strings.TrimPrefix(path, "/"), mode: 0o755, source: path})
	}
	return files, nil
}

// imageLayer is a layer of files, its parent directories made; it is
// compressed quickly, being loaded once into a Pi's Engine or three.
func imageLayer(files []imageFile) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		r, w := io.Pipe()
		go func() { w.CloseWithError(writeImageFiles(w, files)) }()
		return r, nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
}

func writeImageFiles(w io.Writer, files []imageFile) error {
	tw := tar.NewWriter(w)
	mtime := time.Unix(0, 0)
	made := map[string]bool{}
	for _, f := range files {
		dirs := strings.Split(strings.TrimSuffix(f.name, "/"), "/")
		for i := 1; i < len(dirs); i++ {
			d := strings.Join(dirs[:i], "/") + "/"
			if !made[d] {
				made[d] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
					return err
				}
			}
		}
		if strings.HasSuffix(f.name, "/") {
			made[f.name] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: f.name, Mode: f.mode, ModTime: mtime}); err != nil {
				return err
			}
			continue
		}
		if err := writeImageFile(tw, f, mtime); err != nil {
			return err
		}
	}
	return tw.Close()
}

func writeImageFile(tw *tar.Writer, f imageFile, mtime time.Time) error {
	var body io.Reader = bytes.NewReader(f.content)
	size := int64(len(f.content))
	if f.source != "" {
		src, err := os.Open(f.source)
		if err != nil {
			return err
		}
		defer func() { _ = src.Close() }() // read only
		fi, err := src.Stat()
		if err != nil {
			return err
		}
		body, size = src, fi.Size()
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: size, ModTime: mtime}); err != nil {
		return err
	}
	_, err := io.Copy(tw, body)
	return err
}
