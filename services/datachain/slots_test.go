package datachain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// TestFairSlots: a user at their share waits for one of their own slots,
// while another user takes a free one at once; a wait ends with its
// context, and a released slot goes to the next waiter.
func TestFairSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFairSlots(4, 2)
		ctx := t.Context()
		var releases []func()
		for range 2 {
			rel, err := s.acquire(ctx, "mallory")
			if err != nil {
				t.Fatal(err)
			}
			releases = append(releases, rel)
		}
		// Mallory's third waits, though two slots are free.
		third := make(chan func(), 1)
		go func() {
			rel, err := s.acquire(ctx, "mallory")
			if err != nil {
				t.Error(err)
			}
			third <- rel
		}()
		synctest.Wait()
		if len(third) != 0 || s.inUse() != 2 {
			t.Fatalf("mallory's third request took a slot beyond her share (%d in use)", s.inUse())
		}
		// Alice gets one at once.
		relAlice, err := s.acquire(ctx, "alice")
		if err != nil || s.inUse() != 3 {
			t.Fatalf("alice: %v, %d in use", err, s.inUse())
		}
		// A wait that runs out gives up and holds nothing.
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := s.acquire(short, "mallory"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a wait past its deadline: %v", err)
		}
		// One of mallory's ends: her third goes on.
		releases[0]()
		rel := <-third
		if s.inUse() != 3 {
			t.Errorf("%d in use, want 3", s.inUse())
		}
		rel()
		releases[1]()
		relAlice()
		if s.inUse() != 0 || len(s.users) != 0 {
			t.Errorf("after every release: %d in use, %d users kept", s.inUse(), len(s.users))
		}
	})
}

// TestOneUserCannotHoldEveryUploadSlot: mallory starts as many uploads as
// the gateway lets a free-tier principal have in progress (8) and never
// sends their bodies; alice's upload still goes through.
func TestOneUserCannotHoldEveryUploadSlot(t *testing.T) {
	app, hs, _ := start(t)
	mallory := servicetest.User("mallory")
	var stalled []*io.PipeWriter
	t.Cleanup(func() {
		for _, w := range stalled {
			_ = w.CloseWithError(io.ErrUnexpectedEOF)
		}
	})
	for range 8 {
		pr, pw := io.Pipe()
		stalled = append(stalled, pw)
		req, _ := http.NewRequest(http.MethodPut, hs.URL+"/api/v1/chunks", pr)
		req.ContentLength = 4096
		go func() {
			if resp, err := mallory.Do(req); err == nil {
				_ = resp.Body.Close()
			}
		}()
		go func() { _, _ = pw.Write([]byte("a")) }() // a trickle, then nothing
	}
	testenv.Eventually(t, 10*time.Second, "mallory's uploads hold their share of the slots", func() bool {
		return app.putSlots.inUse() == 4
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, hs.URL+"/api/v1/chunks", bytes.NewReader(bytes.Repeat([]byte("b"), 2048)))
	resp, err := alice.Do(req)
	if err != nil {
		t.Fatalf("alice's upload while mallory stalls 8 uploads: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("alice's upload: %d", resp.StatusCode)
	}
	if n := app.putSlots.inUse(); n != 4 {
		t.Errorf("%d upload slots in use with mallory's stalled, want her share of 4", n)
	}
}

// TestSessionsAreBounded: a session takes at most LUCID_SESSION_MAX_CHUNKS
// chunks (409 after), and requests for one session's tree at once build
// it once.
func TestSessionsAreBounded(t *testing.T) {
	app, hs, _ := startWith(t, map[string]string{"LUCID_SESSION_MAX_CHUNKS": "3"})
	mallory := servicetest.User("mallory")
	for i := range 4 {
		body := bytes.Repeat([]byte{byte(i)}, 2048)
		code, out := doAs(t, mallory, http.MethodPut, fmt.Sprintf("%s/api/v1/chunks?session_id=%s&index=%d", hs.URL, sid, i), "", body)
		switch {
		case i < 3 && code != http.StatusCreated:
			t.Fatalf("chunk %d: %d %s", i, code, out)
		case i == 3 && (code != http.StatusConflict || !strings.Contains(out, "LUCID_SESSION_MAX_CHUNKS")):
			t.Fatalf("a fourth chunk into a session of at most 3: %d %s, want 409 naming the limit", code, out)
		}
	}
	before := testutil.ToFloat64(app.builds)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if code, out := doAs(t, mallory, http.MethodGet, hs.URL+"/api/v1/sessions/"+sid, "", nil); code != http.StatusOK {
				t.Errorf("session: %d %s", code, out)
			}
		})
	}
	wg.Wait()
	if n := testutil.ToFloat64(app.builds) - before; n != 1 {
		t.Errorf("8 reads of an unchanged session built its tree %v times, want once", n)
	}
}

// TestOneUserCannotEmptyTheTreeCache: a user reading many sessions keeps
// at most half the tree cache, dropping its own trees it used least; the
// other users' trees stay cached.
func TestOneUserCannotEmptyTheTreeCache(t *testing.T) {
	app, hs, _ := start(t)
	bob, mallory := servicetest.User("bob"), servicetest.User("mallory")
	session := func(i int) string { return fmt.Sprintf("aaaaaaaa-0000-4000-8000-%012x", i) }
	put := func(c *http.Client, s string, chunk []byte) {
		t.Helper()
		if code, out := doAs(t, c, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+s+"&index=0", "", chunk); code != http.StatusCreated {
			t.Fatalf("put: %d %s", code, out)
		}
	}
	read := func(c *http.Client, s string) {
		t.Helper()
		if code, out := doAs(t, c, http.MethodGet, hs.URL+"/api/v1/sessions/"+s+"/proof/0", "", nil); code != http.StatusOK {
			t.Fatalf("proof: %d %s", code, out)
		}
	}
	put(bob, sid, bytes.Repeat([]byte("b"), 1024))
	read(bob, sid)
	for i := range 2 * treeCacheTrees {
		put(mallory, session(i), bytes.Repeat([]byte("m"), 1024))
		read(mallory, session(i))
		read(mallory, session(0)) // used most: kept
	}
	builds := testutil.ToFloat64(app.builds)
	read(bob, sid)
	if n := testutil.ToFloat64(app.builds) - builds; n != 0 {
		t.Errorf("bob's tree was built again after mallory read %d sessions", 2*treeCacheTrees)
	}
	app.mu.Lock()
	held := 0
	for k := range app.trees {
		if k.owner == "mallory" {
			held++
		}
	}
	_, first := app.trees[treeKey{"mallory", session(0)}]
	_, last := app.trees[treeKey{"mallory", session(2*treeCacheTrees - 1)}]
	_, early := app.trees[treeKey{"mallory", session(1)}]
	app.mu.Unlock()
	if held != treeCacheTrees/2 || !first || !last || early {
		t.Errorf("mallory holds %d trees (want %d), the one used most %v, the last %v, one used least %v", held, treeCacheTrees/2, first, last, early)
	}
}
