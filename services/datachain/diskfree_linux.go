package datachain

import "golang.org/x/sys/unix"

// diskFree is how many bytes the file system holding dir has free for an
// unprivileged writer (Linux counts them in fragments, Frsize).
func diskFree(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Frsize), nil
}
