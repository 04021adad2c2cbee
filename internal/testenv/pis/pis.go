// Package pis runs stand-ins for Raspberry Pis in tests: each Pi a
// container of this machine's Docker Engine on a private network of the
// test's own, with its own address, sshd and Docker Engine, so that
// lucidctl deploy reaches it as it reaches a real Pi; and the faults a
// cluster must survive (a crashed container, a Pi shut down or powered
// off, a Pi cut off from the others). It is a package of its own, not
// part of testenv, because it uses packages (sshx, deployfiles) whose own
// tests use testenv. A test that needs a missing tool skips, or fails
// when CI=true, as testenv decides.
package pis

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/sshx"
)

// Pi stands in for a Raspberry Pi in tests: one container of this
// machine's Docker Engine on a private network, with its own address, its
// own sshd (root logs in with the test's key) and its own Docker Engine. A
// deploy reaches it as it reaches a real Pi, over SSH with the Docker
// socket forwarded, and what it deploys runs inside it (nested), publishing
// its ports on the Pi's address.
//
// Its root filesystem is this machine's /usr and /etc, read-only, over an
// image of a few directories: the sshd, dockerd, containerd, runc,
// iptables, docker-compose and flock the host has are the Pi's. What a Pi
// keeps across a restart is what a real one keeps on its SD card: the
// container's own layer (the deploy directory, /var/log) and its Engine's
// data (/var/lib/docker, a Docker volume, where overlayfs works); /run is a
// tmpfs, emptied by every boot.
type Pi struct {
	// Name is the Pi's hostname: pi1, pi2, ...
	Name string
	// Container is the Pi's container on this machine's Engine.
	Container string
	// Addr is the Pi's address on the private network, which this machine
	// reaches directly.
	Addr    string
	SSHPort int
	// User logs in with ClientKey; KnownHosts trusts every Pi of the set.
	User       string
	ClientKey  string
	KnownHosts string
	HostKey    ssh.PublicKey

	set *piSet
	mu  sync.Mutex
	// cutFrom are the addresses the Pi is partitioned from; a restart
	// keeps the cut, as a reboot keeps a pulled cable pulled.
	cutFrom []string
}

// piSet is the Pis of one Start and what they share.
type piSet struct {
	id      string
	owner   string
	network string
	subnet  string
	image   string
	pis     []*Pi
}

// Labels and names of what Start leaves on the Engine, for its cleanup
// and for the next run's cleanup of a killed run's leftovers.
const (
	piOwnerLabel = "lucid.test.pis.owner"
	piImageRepo  = "lucid-test-pi"
	// piUpTimeout bounds a Pi's boot: sshd and its Engine answering. A
	// boot takes seconds alone, but CI runs pkg/deploy's Docker work beside
	// the cluster test on 2 cores, and a Pi booted after a power cut there
	// once took over a minute to start its container.
	piUpTimeout = 3 * time.Minute
	// piStopTimeout is how long a graceful stop may take before the Engine
	// kills the Pi: its Engine stops its containers first (10 s each at
	// most, and its own shutdown timeout is 15 s).
	piStopTimeout = 60
	// partitionChain is the Pi's iptables chain (raw table) of a partition.
	partitionChain = "LUCID-PARTITION"
)

var piSets struct {
	mu sync.Mutex
	n  int
}

// Start starts n Pis on a private network of their own, each with its
// own address, sshd and Docker Engine, and removes them (containers,
// volumes, network, image) when the test ends, failed or not. It first
// removes what a killed earlier run left. It skips (fails when CI=true)
// without a running Docker Engine or the host tools a Pi runs.
func Start(t testing.TB, n int) []*Pi {
	t.Helper()
	if err := exec.Command("docker", "version").Run(); err != nil {
		testenv.Missing(t, "a running Docker Engine")
	}
	// The Pi's /bin, /sbin and /lib are links into the host's /usr.
	for _, d := range []string{"/bin", "/sbin", "/lib"} {
		if target, err := os.Readlink(d); err != nil || strings.TrimPrefix(target, "/") != "usr"+d {
			testenv.Missing(t, "a merged /usr ("+d+" -> usr"+d+"), which a Pi's root filesystem shares")
		}
	}
	// The tools the Pi runs are the host's, through its /usr.
	bins := map[string]string{}
	for _, tool := range []string{"dockerd", "containerd", "runc", "docker-init", "sshd", "iptables", "flock"} {
		bins[tool] = testenv.Tool(t, tool, "")
		if !underUsr(bins[tool]) {
			testenv.Missing(t, tool+" under /usr ("+bins[tool]+" is not in a Pi's root filesystem)")
		}
	}
	if exec.Command("docker", "compose", "version").Run() != nil {
		testenv.Tool(t, "docker-compose", "")
	}
	sftp := ""
	for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			sftp = p
			break
		}
	}
	if sftp == "" {
		testenv.Missing(t, "sftp-server (openssh-server)")
	}
	removeStalePis(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	piSets.mu.Lock()
	piSets.n++
	owner := processOwner(os.Getpid())
	set := &piSet{owner: owner, id: fmt.Sprintf("%s-%d", owner, piSets.n)}
	piSets.mu.Unlock()
	set.image = piImageRepo + ":" + set.id
	t.Cleanup(func() { set.remove(t) })

	if err := importPiImage(ctx, set.image, owner); err != nil {
		t.Fatal(err)
	}
	if err := set.createNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, clientKey := testenv.WriteKey(t, dir, "client_ed25519")
	knownHosts := filepath.Join(dir, "known_hosts")
	clientPub, err := publicKeyOfFile(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	var known []string
	for i := 1; i <= n; i++ {
		p := &Pi{
			Name:       fmt.Sprintf("pi%d", i),
			Addr:       set.addr(i + 1),
			SSHPort:    22,
			User:       "root",
			ClientKey:  clientKey,
			KnownHosts: knownHosts,
			set:        set,
		}
		p.Container = "lucid-pi-" + set.id + "-" + p.Name
		piDir := filepath.Join(dir, p.Name)
		if err := os.Mkdir(piDir, 0o700); err != nil {
			t.Fatal(err)
		}
		p.HostKey, _ = testenv.WriteKey(t, piDir, "host_ed25519")
		files := map[string]string{
			"authorized_keys": string(ssh.MarshalAuthorizedKey(clientPub)),
			"sshd_config":     piSSHDConfig(sftp),
			"daemon.json":     `{"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}` + "\n",
			"init":            piInit,
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(piDir, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		known = append(known, knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(p.Addr, strconv.Itoa(p.SSHPort)))}, p.HostKey))
		set.pis = append(set.pis, p)
	}
	if err := os.WriteFile(knownHosts, []byte(strings.Join(known, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Booted at once: most of a boot is waiting for its Engine.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range set.pis {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := dockerCLI(ctx, nil, "volume", "create", "--label", piOwnerLabel+"="+owner, p.volume()); err != nil {
				errs[i] = err
				return
			}
			if _, err := dockerCLI(ctx, nil, p.runArgs(filepath.Join(dir, p.Name), bins)...); err != nil {
				errs[i] = err
				return
			}
			errs[i] = p.waitUp(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return set.pis
}

// underUsr reports whether a tool's path is in a Pi's root filesystem:
// under /usr, or under /bin, /sbin or /lib, which link into it.
func underUsr(path string) bool {
	for _, d := range []string{"/usr/", "/bin/", "/sbin/", "/lib/"} {
		if strings.HasPrefix(path, d) {
			return true
		}
	}
	return false
}

// runArgs is the docker run of the Pi. --privileged would be simplest,
// but it asks for every capability, and an Engine whose own bounding set
// lacks one (CAP_SYS_RESOURCE on this project's CI machines) refuses to
// start such a container; so every capability but that one, no seccomp
// filter, /proc and /sys unmasked, every device allowed, and a cgroup
// namespace of its own, so that its Engine's containers are accounted
// (and removed) under the Pi's own cgroup.
func (p *Pi) runArgs(piDir string, bins map[string]string) []string {
	return []string{"run", "-d", "--name", p.Container, "--hostname", p.Name,
		"-e", "DOCKERD=" + bins["dockerd"], "-e", "SSHD=" + bins["sshd"],
		"--label", piOwnerLabel + "=" + p.set.owner,
		// The Pis resolve each other's names (Docker's DNS on the network);
		// the containers on a Pi do not: give them addresses.
		"--network", p.set.network, "--ip", p.Addr, "--network-alias", p.Name,
		"--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
		"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
		"--cgroupns", "private", "--device-cgroup-rule", "a *:* rwm",
		"-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro",
		// Written by the Pi's Engine; the host's daemon.json is not the Pi's.
		"--tmpfs", "/etc/docker",
		"--tmpfs", "/run",
		"-v", piDir + ":/pi:ro",
		"-v", p.volume() + ":/var/lib/docker",
		// tini (Docker's own init, from the host's /usr) reaps orphans and
		// hands docker stop's SIGTERM to the init script.
		p.set.image, bins["docker-init"], "--", "/bin/bash", "/pi/init"}
}

func (p *Pi) volume() string { return p.Container + "-docker" }

// piInit boots a Pi: its cgroups writable for its Engine, then the Engine
// and sshd. docker stop's SIGTERM shuts both down, the Engine stopping its
// containers as a Pi's shutdown does; either of them dying stops the Pi.
const piInit = `#!/bin/bash
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
	# cgroup v2, as Docker's dind does it (untested on this project's CI,
	# which has cgroup v1): this script's processes move to a leaf, so the
	# root can delegate every controller to the Engine's containers.
	mount -o remount,rw /sys/fs/cgroup
	mkdir -p /sys/fs/cgroup/init
	xargs -rn1 < /sys/fs/cgroup/cgroup.procs > /sys/fs/cgroup/init/cgroup.procs || :
	sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers > /sys/fs/cgroup/cgroup.subtree_control
else
	for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$d"; done
fi
mkdir -p /run/sshd /var/log
echo "$(date -u +%FT%TZ) boot" >> /var/log/pi.log
# The Pi's containers' packets go out through its own interface.
"$DOCKERD" --config-file /pi/daemon.json --mtu "$(cat /sys/class/net/eth0/mtu)" >> /var/log/dockerd.log 2>&1 &
dockerd=$!
"$SSHD" -D -e -f /pi/sshd_config >> /var/log/sshd.log 2>&1 &
sshd=$!
trap 'echo "$(date -u +%FT%TZ) shutdown" >> /var/log/pi.log; kill -TERM $sshd $dockerd 2>/dev/null; wait $dockerd; exit 0' TERM INT
wait -n
echo "$(date -u +%FT%TZ) dockerd or sshd ended" >> /var/log/pi.log
exit 1
`

func piSSHDConfig(sftp string) string {
	return strings.Join([]string{
		"Port 22",
		"HostKey /pi/host_ed25519",
		"PidFile /run/sshd.pid",
		"AuthorizedKeysFile /pi/authorized_keys",
		"StrictModes no",
		"UsePAM no",
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"AllowStreamLocalForwarding yes",
		"AllowTcpForwarding yes",
		// The host's /etc/bash.bashrc is the Pi's; see testenv.StartSSHD.
		"SetEnv SHLVL=1",
		"Subsystem sftp " + sftp,
	}, "\n") + "\n"
}

// importPiImage makes the image a Pi's container starts from: the
// directories of a root filesystem whose /usr and /etc are mounted from
// the host, and the links a merged /usr has.
func importPiImage(ctx context.Context, ref, owner string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, d := range []string{"usr", "etc", "root", "tmp", "run", "var", "var/lib", "var/lib/docker", "var/log", "srv", "opt", "home", "proc", "sys", "dev", "pi"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: mtime}); err != nil {
			return err
		}
	}
	for link, target := range map[string]string{"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64", "var/run": "/run"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: link, Linkname: target, Mode: 0o777, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	_, err := dockerCLI(ctx, &buf, "import", "--change", "LABEL "+piOwnerLabel+"="+owner, "-", ref)
	return err
}

// createNetwork creates the set's bridge network on a /24 of 172.30.0.0/16
// that no other network of the Engine holds (another test process's Pis,
// say): the Engine refuses a subnet that overlaps one.
func (s *piSet) createNetwork(ctx context.Context) error {
	s.network = "lucid-pis-" + s.id
	start := 64 + os.Getpid()%128
	var last error
	for i := 0; i < 64; i++ {
		s.subnet = fmt.Sprintf("172.30.%d.0/24", 64+(start-64+i)%128)
		out, err := dockerCLI(ctx, nil, "network", "create", "--driver", "bridge", "--subnet", s.subnet,
			"--label", piOwnerLabel+"="+s.owner, s.network)
		if err == nil {
			return nil
		}
		if !strings.Contains(string(out)+err.Error(), "overlap") {
			return err
		}
		last = err
	}
	return fmt.Errorf("no free /24 in 172.30.64.0/17 for the Pis' network: %w", last)
}

// addr is the set's address whose last byte is host.
func (s *piSet) addr(host int) string {
	return strings.TrimSuffix(s.subnet, "0/24") + strconv.Itoa(host)
}

// remove takes the set off the Engine: containers with their volumes, the
// network, the image. On failure it first logs what each Pi logged.
func (s *piSet) remove(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if t.Failed() {
		for _, p := range s.pis {
			t.Logf("%s (%s):\n%s", p.Name, p.Addr, p.Logs(ctx))
		}
	}
	var errs []error
	for _, p := range s.pis {
		if out, err := dockerCLI(ctx, nil, "rm", "-f", "-v", p.Container); err != nil && !strings.Contains(string(out), "No such container") {
			errs = append(errs, err)
		}
		if out, err := dockerCLI(ctx, nil, "volume", "rm", p.volume()); err != nil && !strings.Contains(string(out), "no such volume") {
			errs = append(errs, err)
		}
	}
	if s.network != "" {
		if out, err := dockerCLI(ctx, nil, "network", "rm", s.network); err != nil && !strings.Contains(string(out), "not found") {
			errs = append(errs, err)
		}
	}
	if out, err := dockerCLI(ctx, nil, "rmi", s.image); err != nil && !strings.Contains(string(out), "No such image") {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("removing the Pis: %v", err)
	}
}

// removeStalePis removes the Pis (containers, volumes, networks, images)
// of test processes that are gone, killed before their cleanup ran. Those
// of a process still running are its own.
func removeStalePis(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	filter := "label=" + piOwnerLabel
	label := `{{.Label "` + piOwnerLabel + `"}}`
	kinds := []struct{ list, remove []string }{
		{[]string{"ps", "-a", "--format", "{{.ID}} " + label}, []string{"rm", "-f", "-v"}},
		{[]string{"volume", "ls", "--format", "{{.Name}} " + label}, []string{"volume", "rm", "-f"}},
		{[]string{"network", "ls", "--format", "{{.ID}} " + label}, []string{"network", "rm"}},
		// An image's listing has no labels; its tag is its set's id,
		// which begins with the owner.
		{[]string{"images", "--format", "{{.Repository}}:{{.Tag}} {{.Tag}}"}, []string{"rmi", "-f"}},
	}
	for _, k := range kinds {
		out, err := dockerCLI(ctx, nil, append(k.list, "--filter", filter)...)
		if err != nil {
			t.Fatalf("list leftover Pis: %v", err)
		}
		var stale []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			id, owner, ok := strings.Cut(line, " ")
			if k.list[0] == "images" {
				owner = owner[:max(strings.LastIndexByte(owner, '-'), 0)]
			}
			if ok && !ownerAlive(owner) {
				stale = append(stale, id)
			}
		}
		if len(stale) == 0 {
			continue
		}
		if _, err := dockerCLI(ctx, nil, append(k.remove, stale...)...); err != nil {
			t.Fatalf("remove leftover Pis of an earlier run: %v", err)
		}
	}
}

// processOwner names a process so that a later process reusing its pid is
// not taken for it: pid and start time (in clock ticks since boot).
func processOwner(pid int) string {
	return strconv.Itoa(pid) + "-" + processStart(pid)
}

func processStart(pid int) string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 { // starttime is field 22; f starts at field 3
		return ""
	}
	return f[19]
}

// ownerAlive reports whether the process a label names still runs.
func ownerAlive(owner string) bool {
	pidText, start, ok := strings.Cut(owner, "-")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || !testenv.ProcessAlive(pid) {
		return false
	}
	return processStart(pid) == start
}

// dockerCLI runs the docker command line on this machine's Engine and
// returns its combined output; an error carries it.
func dockerCLI(ctx context.Context, stdin *bytes.Buffer, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func publicKeyOfFile(file string) (ssh.PublicKey, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, err
	}
	return signer.PublicKey(), nil
}

// SSH connects to the Pi as a deploy does: its address, the client key,
// the known_hosts file, no agent, no ~/.ssh/config. The caller closes it.
func (p *Pi) SSH(ctx context.Context) (*sshx.Client, error) {
	return sshx.Dial(ctx, sshx.Target{Host: p.Addr, Port: p.SSHPort, User: p.User},
		sshx.Options{KeyFiles: []string{p.ClientKey}, KnownHosts: p.KnownHosts, NoAgent: true, ConfigFile: "none", Timeout: 5 * time.Second})
}

// HTTPClient is an HTTP client whose connections start on the Pi, through
// an SSH connection, as lucidctl reaches a host's services: with it,
// http://127.0.0.1:<port> is a service the Pi publishes on its loopback
// only (the engine's API, say). Close the connection when done.
func (p *Pi) HTTPClient(ctx context.Context) (*http.Client, io.Closer, error) {
	c, err := p.SSH(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return c.DialTCP(addr) },
	}}, c, nil
}

// waitUp waits until the Pi answers over SSH and its Engine answers there.
func (p *Pi) waitUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, piUpTimeout)
	defer cancel()
	var last error
	up := testenv.PollUntil(piUpTimeout, func() bool {
		c, err := p.SSH(ctx)
		if err != nil {
			last = err
			return false
		}
		defer c.Close()
		_, last = c.Run(ctx, "docker version --format '{{.Server.Version}}'", nil)
		return last == nil
	})
	if !up {
		return fmt.Errorf("%s (%s) did not come up within %s: %w\n%s", p.Name, p.Addr, piUpTimeout, last, p.Logs(context.WithoutCancel(ctx)))
	}
	return nil
}

// Exec runs a command in the Pi (not over SSH: it works while the Pi is
// partitioned, as a console would) and returns its combined output.
func (p *Pi) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return dockerCLI(ctx, nil, append([]string{"exec", p.Container}, args...)...)
}

// Docker runs the docker command line on the Pi's own Engine.
func (p *Pi) Docker(ctx context.Context, args ...string) ([]byte, error) {
	return p.Exec(ctx, append([]string{"docker"}, args...)...)
}

// Kill crashes a container on the Pi: its main process is killed with
// SIGKILL, and its restart policy (lucid's: unless-stopped) brings it back
// as after any crash. (docker kill would count as stopping it by hand,
// and it would stay down: for that, Docker(ctx, "kill", name) and later
// Docker(ctx, "start", name).)
func (p *Pi) Kill(ctx context.Context, container string) error {
	_, err := p.Exec(ctx, "bash", "-c", `pid=$(docker inspect -f '{{.State.Pid}}' "$1") && [ "$pid" -gt 0 ] && kill -KILL "$pid"`, "kill", container)
	if err != nil {
		return fmt.Errorf("%s: crash %s: %w", p.Name, container, err)
	}
	return nil
}

// Stop shuts the whole Pi down cleanly: its Engine stops its containers,
// then sshd and the Engine end. Start boots it again.
func (p *Pi) Stop(ctx context.Context) error {
	_, err := dockerCLI(ctx, nil, "stop", "-t", strconv.Itoa(piStopTimeout), p.Container)
	return err
}

// PowerOff cuts the Pi's power: every process on it, its containers'
// too, is killed at once. Start boots it again.
func (p *Pi) PowerOff(ctx context.Context) error {
	_, err := dockerCLI(ctx, nil, "kill", p.Container)
	return err
}

// Start boots a stopped Pi and returns once sshd and its Engine answer;
// its Engine then starts the containers whose restart policy says so
// (lucid's: unless-stopped), which the caller waits for. A partition it
// was in holds again.
func (p *Pi) Start(ctx context.Context) error {
	if _, err := dockerCLI(ctx, nil, "start", p.Container); err != nil {
		return err
	}
	if err := p.waitUp(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	cut := p.cutFrom
	p.mu.Unlock()
	if len(cut) > 0 {
		return p.applyPartition(ctx, cut)
	}
	return nil
}

// Partition cuts the Pi off from the other Pis (by default every other Pi
// of its set) in both directions, its containers' traffic included:
// packets are dropped, as a pulled cable or a dead switch port drops them,
// so connections time out rather than being refused. This machine still
// reaches the Pi (SSH, its published ports), so a test can watch both
// sides and clients can keep calling the cut-off Pi's gateway.
//
// The rules are in the raw table of the Pi's own network namespace
// (PREROUTING and OUTPUT, before connection tracking and the NAT of its
// Engine's published ports), so they touch nothing on this machine and
// go with the Pi. Disconnecting the Pi from the Docker network instead
// would take its address away, and this machine's view of it with it.
func (p *Pi) Partition(ctx context.Context, from ...*Pi) error {
	if len(from) == 0 {
		for _, q := range p.set.pis {
			if q != p {
				from = append(from, q)
			}
		}
	}
	var addrs []string
	for _, q := range from {
		addrs = append(addrs, q.Addr)
	}
	p.mu.Lock()
	p.cutFrom = addrs
	p.mu.Unlock()
	return p.applyPartition(ctx, addrs)
}

func (p *Pi) applyPartition(ctx context.Context, addrs []string) error {
	script := []string{
		"set -e",
		"iptables -t raw -N " + partitionChain + " 2>/dev/null || iptables -t raw -F " + partitionChain,
		"iptables -t raw -C PREROUTING -j " + partitionChain + " 2>/dev/null || iptables -t raw -I PREROUTING -j " + partitionChain,
		"iptables -t raw -C OUTPUT -j " + partitionChain + " 2>/dev/null || iptables -t raw -I OUTPUT -j " + partitionChain,
	}
	for _, a := range addrs {
		// In: from a. Out: to a, from the Pi itself (OUTPUT) and from its
		// containers (routed, so seen in PREROUTING).
		script = append(script,
			"iptables -t raw -A "+partitionChain+" -s "+a+" -j DROP",
			"iptables -t raw -A "+partitionChain+" -d "+a+" -j DROP")
	}
	_, err := p.Exec(ctx, "bash", "-c", strings.Join(script, "\n"))
	return err
}

// Heal ends the Pi's partition.
func (p *Pi) Heal(ctx context.Context) error {
	p.mu.Lock()
	p.cutFrom = nil
	p.mu.Unlock()
	_, err := p.Exec(ctx, "bash", "-c", "iptables -t raw -F "+partitionChain+" 2>/dev/null || true")
	return err
}

// LoadImage loads a `docker save` tarball into the Pi's Engine, as an
// operator does for an image the Pi cannot pull.
func (p *Pi) LoadImage(ctx context.Context, tarball string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }() // read only
	cmd := exec.CommandContext(ctx, "docker", "exec", "-i", p.Container, "docker", "load", "-q")
	cmd.Stdin = f
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("load %s into %s: %w: %s", filepath.Base(tarball), p.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MemoryBytes is the memory the whole Pi uses (its Engine, sshd and every
// container on it), as docker stats counts it: usage less the page cache
// that can be dropped at once.
func (p *Pi) MemoryBytes(ctx context.Context) (int64, error) {
	out, err := p.Exec(ctx, "bash", "-c", `
if [ -f /sys/fs/cgroup/memory.current ]; then
	echo "$(cat /sys/fs/cgroup/memory.current) $(awk '$1=="inactive_file"{print $2}' /sys/fs/cgroup/memory.stat)"
else
	echo "$(cat /sys/fs/cgroup/memory/memory.usage_in_bytes) $(awk '$1=="total_inactive_file"{print $2}' /sys/fs/cgroup/memory/memory.stat)"
fi`)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return 0, fmt.Errorf("%s: memory: cannot read %q", p.Name, out)
	}
	usage, err1 := strconv.ParseInt(f[0], 10, 64)
	inactive, err2 := strconv.ParseInt(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s: memory: %w", p.Name, err)
	}
	return usage - inactive, nil
}

// Logs is what the Pi logged (its boots, its Engine's warnings and
// errors, sshd), the state of its containers, and the last lines of each
// that is not healthy, for a failed test's output. A Pi that is down
// still has its files.
func (p *Pi) Logs(ctx context.Context) string {
	var b strings.Builder
	for _, f := range []string{"/var/log/pi.log", "/var/log/dockerd.log", "/var/log/sshd.log"} {
		out, err := dockerCLI(ctx, nil, "cp", p.Container+":"+f, "-")
		if err != nil {
			fmt.Fprintf(&b, "--- %s: %v\n", f, err)
			continue
		}
		keep := func(line string) bool {
			return !strings.Contains(line, "level=info") && !strings.Contains(line, "level=debug")
		}
		fmt.Fprintf(&b, "--- %s (last lines)\n%s\n", f, lastLinesOfTar(out, 30, keep))
	}
	out, err := p.Docker(ctx, "ps", "-a", "--format", "{{.Names}}\t{{.Status}}")
	if err != nil {
		return b.String()
	}
	fmt.Fprintf(&b, "--- containers\n%s", out)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, status, _ := strings.Cut(line, "\t")
		if name == "" || strings.Contains(status, "(healthy)") {
			continue
		}
		logs, _ := p.Docker(ctx, "logs", "--tail", "20", name)
		fmt.Fprintf(&b, "--- %s (%s), last lines\n%s\n", name, status, strings.TrimRight(string(logs), "\n"))
	}
	return b.String()
}

// lastLinesOfTar returns the last n lines that keep accepts of the one
// file in a tar stream (docker cp's output).
func lastLinesOfTar(archive []byte, n int, keep func(string) bool) string {
	tr := tar.NewReader(bytes.NewReader(archive))
	if _, err := tr.Next(); err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(tr); err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		if keep(l) {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
