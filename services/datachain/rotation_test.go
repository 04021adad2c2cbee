package datachain

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/packstore"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// TestEncryptionKeyRing: the data chain takes its key ring from
// ENCRYPTION_KEY and ENCRYPTION_PREVIOUS_KEYS: chunks stored under the old
// key are served, the status counts records per key id, and a compaction
// re-encrypts them to the new key.
func TestEncryptionKeyRing(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte("o"), 32), bytes.Repeat([]byte("n"), 32)
	dir := t.TempDir()
	st, err := packstore.Open(packstore.Options{Dir: filepath.Join(dir, "chunks"), Key: oldKey})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("stored under the old key "), 100)
	id, err := st.Put(context.Background(), owner, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	app := New().(*App)
	r := envconfig.New(envconfig.Map(map[string]string{
		"ENCRYPTION_KEY":           string(newKey),
		keyring.EncryptionPrevious: keyring.Format([]keyring.Entry{{Value: oldKey}}),
	}))
	app.Configure(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	srv := service.New(servicetest.Config("datachain", dir), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); cancel(); _ = app.Close() })

	if code, body := do(t, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 200 || body != string(data) {
		t.Fatalf("chunk under the old key: %d", code)
	}
	status := func() map[string]int {
		t.Helper()
		_, body := doAs(t, operator, http.MethodGet, hs.URL+"/api/v1/status", "", nil)
		var s Status
		if err := json.Unmarshal([]byte(body), &s); err != nil {
			t.Fatalf("status: %v: %s", err, body)
		}
		out := map[string]int{}
		for _, k := range s.Keys {
			out[k.KeyID] = k.Records
		}
		return out
	}
	oldID, _ := packstore.KeyIDOf(oldKey)
	newID, _ := packstore.KeyIDOf(newKey)
	if got := status(); got[oldID] != 1 || got[newID] != 0 {
		t.Fatalf("records per key before compaction: %v", got)
	}
	code, body := doAs(t, operator, http.MethodPost, hs.URL+"/api/v1/compact", "", nil)
	var rep packstore.CompactReport
	if code != 200 || json.Unmarshal([]byte(body), &rep) != nil || rep.ReencryptedChunks != 1 {
		t.Fatalf("compact: %d %s", code, body)
	}
	if got := status(); got[oldID] != 0 || got[newID] != 1 {
		t.Fatalf("records per key after compaction: %v", got)
	}
}

// TestEncryptionPreviousKeysChecked: a malformed or short previous key is
// a configuration error that shows no value.
func TestEncryptionPreviousKeysChecked(t *testing.T) {
	for _, v := range []string{"not base64!", keyring.Format([]keyring.Entry{{Value: []byte("short-old-key")}})} {
		r := envconfig.New(envconfig.Map(map[string]string{"ENCRYPTION_KEY": string(bytes.Repeat([]byte("n"), 32)), keyring.EncryptionPrevious: v}))
		New().Configure(r)
		err := r.Err()
		if err == nil {
			t.Fatalf("%q accepted", v)
		}
		if bytes.Contains([]byte(err.Error()), []byte("short-old-key")) || bytes.Contains([]byte(err.Error()), []byte("base64!")) {
			t.Fatalf("the error shows the value: %v", err)
		}
	}
}
