package cli

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// modulePath identifies Lucid's source tree.
const modulePath = "github.com/pickme/lucid"

// SourceRoot returns the directory at or above dir whose go.mod declares
// Lucid's module, or "".
func SourceRoot(dir string) string {
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			sc.Scan()
			_ = f.Close() // only read
			if strings.TrimSpace(sc.Text()) == "module "+modulePath {
				return dir
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
