package service

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/restoredata"
)

// slowApp serves GET /slow, which logs that it is in flight and answers
// only once the service has been told to stop (stopping is closed); the
// helper process runs it.
type slowApp struct {
	Basic
	stopping <-chan struct{}
}

// inFlight is the log message of a /slow request that has started.
const inFlight = "slow request in flight"

func (a slowApp) Provision(_ context.Context, srv *Server) error {
	srv.Handle("GET /slow", func(w http.ResponseWriter, _ *http.Request) error {
		srv.Logger().Info(inFlight)
		<-a.stopping
		_, err := io.WriteString(w, "finished")
		return err
	})
	return nil
}

func TestMain(m *testing.M) {
	if os.Getenv("LUCID_SERVICE_TEST_HELPER") == "slow" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := Main(ctx, "engine", slowApp{stopping: ctx.Done()}, envconfig.OS, os.Stderr)
		stop()
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSIGTERMDrainsSlowRequest runs a real service process, sends it SIGTERM
// during a slow request, and checks that the request still gets its answer
// and the process exits cleanly within the deadline.
func TestSIGTERMDrainsSlowRequest(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no SIGTERM on Windows")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LUCID_SERVICE_TEST_HELPER=slow", "LUCID_ADDR=127.0.0.1:0", "LUCID_SHUTDOWN_TIMEOUT=5s", EnvServiceKey+"="+testKey)
	logs, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	// The service logs its address once it listens, and the slow request
	// once it is in flight.
	sc := bufio.NewScanner(logs)
	untilLogged := func(msg string) (addr string) {
		for sc.Scan() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == msg {
				return rec.Addr
			}
		}
		t.Fatalf("service never logged %q", msg)
		return ""
	}
	addr := untilLogged("serving")
	res := getAsync("http://" + addr + "/slow")
	untilLogged(inFlight)
	go func() { _, _ = io.Copy(io.Discard, logs) }()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Fatalf("slow request after SIGTERM: %q, %v", r.body, r.err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("service exited with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("service did not exit after draining")
	}
}

func TestMainRefusesBadConfig(t *testing.T) {
	err := Main(context.Background(), "gateway", appFunc(func(r *envconfig.Reader) {
		r.Secret("JWT_SECRET_KEY", 32, "tokens are verified with it")
	}), envconfig.Map(map[string]string{}), io.Discard)
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "JWT_SECRET_KEY") {
		t.Fatalf("Main without JWT_SECRET_KEY = %v", err)
	}
}

// appFunc is an App whose Configure is f.
type appFunc func(r *envconfig.Reader)

func (f appFunc) Configure(r *envconfig.Reader)          { f(r) }
func (appFunc) Provision(context.Context, *Server) error { return nil }

// TestMainRefusesAHalfRestoredDataDir: a service does not start on a data
// directory a restore did not finish replacing.
func TestMainRefusesAHalfRestoredDataDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, restoredata.IncompleteName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := Main(context.Background(), "engine", appFunc(func(*envconfig.Reader) {}),
		envconfig.Map(map[string]string{EnvDataDir: dir, "LUCID_SERVICE_KEY": strings.Repeat("k", 48)}), io.Discard)
	if !errors.Is(err, restoredata.ErrIncomplete) {
		t.Fatalf("Main on a half-restored data directory = %v", err)
	}
}
