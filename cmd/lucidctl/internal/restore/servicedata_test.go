package restore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
)

// manifestSource is a Source with manifests only.
type manifestSource struct{ services []snapshotapi.Manifest }

func (s manifestSource) ID() string                       { return "test" }
func (s manifestSource) Services() []snapshotapi.Manifest { return s.services }
func (s manifestSource) EnvFiles() []snapshotapi.File     { return nil }
func (s manifestSource) Open(context.Context, string, string) (io.ReadCloser, error) {
	return nil, fmt.Errorf("not here")
}

// TestRestoreManifestHoldsNoPieces: a data chain of 300 GiB in 1 MiB
// pieces backs up (its pieces are how the backup stores it) and must
// restore too: the manifest each service's restore stream starts with
// lists files, not their 300,000 pieces' hashes, which would pass the
// stream's 16 MiB bound (restoredata).
func TestRestoreManifestHoldsNoPieces(t *testing.T) {
	var pieces []string
	for i := range 300_000 {
		pieces = append(pieces, fmt.Sprintf("%064x", i))
	}
	var files []snapshotapi.File
	for i := range 300 {
		files = append(files, snapshotapi.File{Path: fmt.Sprintf("packs/%06d.pack", i), Size: 1 << 30, Mode: 0o600,
			SHA256: strings.Repeat("a", 64), Pieces: pieces[i*1000 : (i+1)*1000]})
	}
	data := serviceData(manifestSource{[]snapshotapi.Manifest{{Service: "datachain", PieceSize: 1 << 20, Files: files}}}, nil)
	if len(data) != 1 || len(data[0].Manifest.Files) != len(files) {
		t.Fatalf("serviceData: %+v", data)
	}
	b, err := json.Marshal(data[0].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1<<20 {
		t.Errorf("the restore stream's manifest of 300 files takes %d bytes", len(b))
	}
	for _, f := range data[0].Manifest.Files {
		if f.Size != 1<<30 || f.SHA256 == "" || len(f.Pieces) != 0 {
			t.Fatalf("a file of the restore manifest: %s %d %q, %d pieces", f.Path, f.Size, f.SHA256, len(f.Pieces))
		}
	}
}
