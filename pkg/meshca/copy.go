package meshca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// CopyTo copies the CA's files into dir (made if missing), as they are
// between two changes: ca.json (both keys, mode 0600) and the bundle. It
// returns the fingerprint of the root the copy holds.
func (ca *CA) CopyTo(dir string) (string, error) {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	for _, name := range []string{stateFile, bundleFile} {
		data, err := os.ReadFile(filepath.Join(ca.dir, name))
		if errors.Is(err, fs.ErrNotExist) && name == bundleFile {
			continue // an export, never read back
		}
		if err != nil {
			return "", fmt.Errorf("mesh CA: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", fmt.Errorf("mesh CA copy: %w", err)
		}
	}
	return fingerprint(ca.root), nil
}
