package deploy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/sshx"
)

// Files of a release that belong to one service's container alone: the
// gateway's TLS files (deployfiles.TLSDir) and, in a cluster, the mesh
// controller's CA seed (deployfiles.MeshCASeedDir). The release's compose
// file mounts each directory read-only into that container only, each
// file owned by the services' user (65532) with mode 0600, so that its
// container reads them and no other container has them. The deploy user
// cannot give a file away (chown needs root), so the files are put there
// by the Docker Engine: copied into a one-shot container of the service's
// image that bind-mounts the directory, from a tar whose headers carry
// that owner and mode. The container is only created, never started. Each
// release has its own copy: a rollback brings its files back with it,
// and pruning a release removes them (the directory stays the deploy
// user's).
type privateDir struct {
	// what names the files in messages.
	what string
	// dir is the directory in a release.
	dir string
	// sums lists the SHA-256 of each file, beside the directory: a dry
	// run compares them with the next release's without reading the
	// files, which the deploy user cannot.
	sums string
	// names are the files the directory may hold, in shipping order.
	names []string
}

var (
	tlsDir  = privateDir{what: "TLS file of the gateway", dir: deployfiles.TLSDir, sums: "configs/gateway/tls.sha256", names: deployfiles.TLSFileNames}
	seedDir = privateDir{what: "file of the mesh CA seed", dir: deployfiles.MeshCASeedDir, sums: "configs/mesh/ca.sha256", names: deployfiles.MeshCASeedFileNames}
)

// privateLabel marks the one-shot containers that place private files.
const privateLabel = "io.lucid.tls"

// place puts files (name in pd.dir → content) into release id's pd.dir,
// owned by the services' user with mode 0600, through a container of
// image, and checks they arrived so.
func (h *host) place(ctx context.Context, id, image string, pd privateDir, files map[string][]byte) error {
	dir := path.Join(h.releaseDir(id), pd.dir)
	if _, err := h.run(ctx, "mkdir -p "+sshx.Quote(dir)+" && chmod 0755 "+sshx.Quote(dir)); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	uid, gid, err := serviceUser()
	if err != nil {
		return err
	}
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	names := pd.ordered(files)
	now := time.Now()
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(files[n])), Uid: uid, Gid: gid, ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	const target = "/lucid-private"
	created, err := h.docker.ContainerCreate(ctx, &container.Config{
		Image: image, Entrypoint: []string{deployfiles.Binary}, Cmd: []string{"version"},
		Labels: map[string]string{privateLabel: id},
	}, &container.HostConfig{
		NetworkMode: "none",
		Mounts:      []mount.Mount{{Type: mount.TypeBind, Source: dir, Target: target}},
	}, nil, nil, "")
	if err != nil {
		return fmt.Errorf("create the container that places each %s: %w", pd.what, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = h.docker.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true})
	}()
	if err := h.docker.CopyToContainer(ctx, created.ID, target, &archive, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("place each %s: %w", pd.what, err)
	}
	// What the service's container will see: checked, not assumed.
	var quoted []string
	for _, n := range names {
		quoted = append(quoted, sshx.Quote(path.Join(dir, n)))
	}
	out, err := h.run(ctx, "stat -c '%u:%g:%a %n' "+strings.Join(quoted, " "))
	if err != nil {
		return fmt.Errorf("check each %s: %w", pd.what, err)
	}
	want := fmt.Sprintf("%d:%d:600 ", uid, gid)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("the %s %s is not its container's alone (owner:group:mode %s, want %s)", pd.what, path.Base(line[strings.LastIndex(line, " ")+1:]), strings.Fields(line)[0], strings.TrimSpace(want))
		}
	}
	return h.ssh.WriteFile(ctx, path.Join(h.releaseDir(id), pd.sums), pd.sumsOf(files), 0o644)
}

// serviceUser is deployfiles.User as numbers.
func serviceUser() (uid, gid int, err error) {
	u, g, _ := strings.Cut(deployfiles.User, ":")
	if uid, err = strconv.Atoi(u); err == nil {
		gid, err = strconv.Atoi(g)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("the services' user %q is not numeric", deployfiles.User)
	}
	return uid, gid, nil
}

// ordered are files' names in the order pd ships them.
func (pd privateDir) ordered(files map[string][]byte) []string {
	var out []string
	for _, n := range pd.names {
		if _, ok := files[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

// sumsOf is pd.sums' content for files.
func (pd privateDir) sumsOf(files map[string][]byte) []byte {
	var b strings.Builder
	for _, n := range pd.ordered(files) {
		s := sha256.Sum256(files[n])
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(s[:]), n)
	}
	return []byte(b.String())
}

// check refuses names pd may not hold.
func (pd privateDir) check(files map[string][]byte) error {
	for n := range files {
		if !slices.Contains(pd.names, n) {
			return fmt.Errorf("%q is not a %s (%s)", n, pd.what, strings.Join(pd.names, ", "))
		}
	}
	return nil
}

// leafOf is the DER of the first certificate of a PEM chain, nil if none.
func leafOf(chain []byte) []byte {
	for len(chain) > 0 {
		var b *pem.Block
		if b, chain = pem.Decode(chain); b == nil {
			return nil
		} else if b.Type == "CERTIFICATE" {
			return b.Bytes
		}
	}
	return nil
}

// gatewayAddr is where the gateway answers on the host's loopback: the
// configured port, else the one its container publishes for its main
// listener (HTTPS with TLS on, which render publishes on tls.https_port),
// else the catalog's.
func (d *Deployer) gatewayAddr(ctx context.Context) string {
	gw, _ := catalog.Lookup(catalog.GatewayService)
	port := d.cfg.GatewayHostPort
	if port == 0 {
		port = gw.Port
		if byService, err := d.h.serviceContainers(ctx); err == nil {
			for _, c := range byService {
				if !slices.Contains(c.Names, "/"+gw.Container) {
					continue
				}
				for _, p := range c.Ports {
					if int(p.PrivatePort) == gw.Port && p.PublicPort != 0 && p.Type == "tcp" {
						port = int(p.PublicPort)
					}
				}
			}
		}
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// gatewayClient is a client for the gateway at addr through the
// connection: over TLS when it speaks TLS, and then, when leaf is given,
// only if it serves that certificate. A gateway that speaks TLS but
// completes no handshake, with no leaf expected, is waiting for its first
// ACME certificate: pending says so, and there is nothing to ask it yet.
func (h *host) gatewayClient(ctx context.Context, addr string, leaf []byte) (hc *http.Client, scheme string, pending error, err error) {
	dial := func(context.Context, string, string) (net.Conn, error) { return h.ssh.DialTCP(addr) }
	tr := &http.Transport{DialContext: dial}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Reached on the host's loopback through SSH: the name is not the
		// public one. The certificate is checked against the release's.
		InsecureSkipVerify: true, //nolint:gosec // VerifyConnection compares the served leaf with the release's when it is known
		VerifyConnection: func(cs tls.ConnectionState) error {
			if leaf != nil && (len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf)) {
				return errors.New("the gateway serves another certificate than the release's")
			}
			return nil
		},
	}
	conn, err := dial(ctx, "", "")
	if err != nil {
		return nil, "", nil, err
	}
	probe := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	herr := probe.HandshakeContext(hctx)
	_ = probe.Close() // a probe
	var rh tls.RecordHeaderError
	switch {
	case herr == nil:
		tr.TLSClientConfig = cfg
		return &http.Client{Timeout: 10 * time.Second, Transport: tr}, "https", nil, nil
	case errors.As(herr, &rh):
		return &http.Client{Timeout: 10 * time.Second, Transport: tr}, "http", nil, nil
	case leaf == nil:
		return nil, "https", fmt.Errorf("the gateway speaks TLS but completes no handshake yet (an ACME certificate still to come?): %w", herr), nil
	}
	return nil, "", nil, fmt.Errorf("TLS handshake with the gateway: %w", herr)
}
