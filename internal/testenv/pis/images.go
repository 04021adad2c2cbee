package pis

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
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// imageFormat changes whenever what the images of this file hold does,
// so that a cached tarball of the old kind is not used.
const imageFormat = "1"

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
	bin := testenv.Tool(t, "consul", "LUCID_CONSUL_BIN")
	consulImage.once.Do(func() {
		consulImage.path, consulImage.err = imageSpec{
			ref: deployfiles.ConsulImage,
			layers: [][]imageFile{
				{
					{name: "consul/data/", mode: 0o755},
					{name: "consul/config/", mode: 0o755},
					{name: "tmp/", mode: 0o1777},
					{name: "usr/local/bin/docker-entrypoint.sh", mode: 0o755, content: []byte(consulEntrypoint)},
					{name: "bin/sh", mode: 0o755, source: "/bin/sh", libraries: true},
				},
				{{name: "bin/consul", mode: 0o755, source: bin, strip: true}},
			},
			entrypoint:  []string{"docker-entrypoint.sh"},
			cmd:         []string{"agent", "-dev", "-client", "0.0.0.0"},
			description: "Consul for Lucid's tests, from LUCID_CONSUL_BIN",
		}.tarball()
	})
	if consulImage.err != nil {
		t.Fatalf("consul image: %v", consulImage.err)
	}
	return consulImage.path
}

// HostBinaryImage returns a `docker save` tarball of an image named ref
// that runs cmd, made of this machine's binaries (each in
// /usr/local/bin, on PATH) with the libraries they load, /bin/sh (for a
// healthcheck's CMD-SHELL) and /tmp: for a server such as redis-server
// that a compose file runs from a registry's image, which tests cannot
// pull. It is built once per set of binaries and kept in the user's cache
// directory (lucid/test-images).
func HostBinaryImage(t testing.TB, ref string, cmd []string, binaries ...string) string {
	t.Helper()
	files := []imageFile{
		{name: "tmp/", mode: 0o1777},
		{name: "bin/sh", mode: 0o755, source: "/bin/sh", libraries: true},
	}
	for _, b := range binaries {
		files = append(files, imageFile{name: "usr/local/bin/" + filepath.Base(b), mode: 0o755, source: b, libraries: true})
	}
	out, err := imageSpec{ref: ref, layers: [][]imageFile{files}, cmd: cmd, description: "for Lucid's tests, from this machine's " + strings.Join(binaries, ", ")}.tarball()
	if err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	return out
}

// imageSpec is an image made of this machine's files, one layer per
// slice of layers.
type imageSpec struct {
	ref             string
	layers          [][]imageFile
	entrypoint, cmd []string
	description     string
}

// key names the spec and the files it is made of, as they are now.
func (s imageSpec) key() (string, error) {
	b := fmt.Appendf(nil, "%s %s %s %q %q\n", imageFormat, runtime.GOARCH, s.ref, s.entrypoint, s.cmd)
	for _, layer := range s.layers {
		for _, f := range layer {
			b = fmt.Appendf(b, "%s %o %v %v %x", f.name, f.mode, f.strip, f.libraries, sha256.Sum256(f.content))
			if f.source != "" {
				fi, err := os.Stat(f.source)
				if err != nil {
					return "", err
				}
				b = fmt.Appendf(b, " %s %d %d", f.source, fi.Size(), fi.ModTime().UnixNano())
			}
			b = append(b, '\n')
		}
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6]), nil
}

// tarball returns the cached tarball of the image, built first if it is
// not there.
func (s imageSpec) tarball() (string, error) {
	key, err := s.key()
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "lucid", "test-images")
	repo, _, _ := strings.Cut(filepath.Base(s.ref), ":")
	out := filepath.Join(dir, repo+"-"+key+".tar")
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
	img := empty.Image
	var libDirs []string
	for _, files := range s.layers {
		var entries []imageFile
		seen := map[string]bool{} // a library two binaries load, once
		add := func(f imageFile) {
			if !seen[f.name] {
				seen[f.name] = true
				entries = append(entries, f)
			}
		}
		for _, f := range files {
			if f.strip {
				if f, err = stripped(f, work); err != nil {
					return "", err
				}
			}
			add(f)
			if f.libraries {
				libs, err := librariesOf(f.source)
				if err != nil {
					return "", err
				}
				for _, l := range libs {
					libDirs = append(libDirs, filepath.Dir(l.source))
					add(l)
				}
			}
		}
		layer, err := imageLayer(entries)
		if err != nil {
			return "", err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return "", err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if len(libDirs) > 0 {
		slices.Sort(libDirs)
		cf.Config.Env = append(cf.Config.Env, "LD_LIBRARY_PATH="+strings.Join(slices.Compact(libDirs), ":"))
	}
	cf.Config.Entrypoint, cf.Config.Cmd = s.entrypoint, s.cmd
	cf.Config.Labels = map[string]string{"org.opencontainers.image.description": s.description}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	ref, err := name.NewTag(s.ref)
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

// stripped is f with its source stripped of debug information into dir,
// when strip(1) is here; else f.
func stripped(f imageFile, dir string) (imageFile, error) {
	strip, err := exec.LookPath("strip")
	if err != nil {
		return f, nil
	}
	dst := filepath.Join(dir, strings.ReplaceAll(f.name, "/", "_"))
	if out, err := exec.Command(strip, "-o", dst, f.source).CombinedOutput(); err != nil {
		return f, fmt.Errorf("strip %s: %w: %s", f.source, err, out)
	}
	f.source = dst
	return f, nil
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
// file with content, or a file copied from source (stripped of debug
// information with strip, with the libraries it loads with libraries).
type imageFile struct {
	name      string
	mode      int64
	content   []byte
	source    string
	strip     bool
	libraries bool
}

// librariesOf are the shared libraries a binary loads, the dynamic loader
// among them, at the paths it loads them from, as ldd(1) says; none for a
// static binary.
func librariesOf(bin string) ([]imageFile, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, out)
	}
	var files []imageFile
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
