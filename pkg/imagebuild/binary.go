package imagebuild

import (
	"cmp"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// What a lucid binary is built from and stamped through.
const (
	lucidMain        = "github.com/pickme/lucid/cmd/lucid"
	buildinfoVersion = "github.com/pickme/lucid/pkg/buildinfo.Version"
	buildinfoCommit  = "github.com/pickme/lucid/pkg/buildinfo.Commit"
)

// Binary is what a ready lucid binary says of itself.
type Binary struct {
	// Stamp is its version, commit and commit time; Version is empty when
	// the binary does not say.
	Stamp Stamp
	// GOOS, GOARCH and GOARM are the platform it was built for.
	GOOS, GOARCH, GOARM string
}

// ReadBinary reads a lucid binary's Go build information (what `go
// version -m` shows). The version and commit are, in order: the values
// the linker stamped into pkg/buildinfo, as recorded in the -ldflags build
// setting (absent from a -trimpath build) or found through the ELF symbol
// table (absent from a -s build); else the module version and the VCS
// revision Go recorded. A file that is no lucid binary is an error.
func ReadBinary(file string) (Binary, error) {
	info, err := buildinfo.ReadFile(file)
	if err != nil {
		return Binary{}, fmt.Errorf("lucid binary %s: %w", file, err)
	}
	if info.Path != lucidMain {
		return Binary{}, fmt.Errorf("%s is %s, not lucid (%s)", file, orNone(info.Path), lucidMain)
	}
	// The images have no C library: a binary that needs one starts as
	// "exec /usr/local/bin/lucid: no such file or directory", on the Pi.
	if dynamic, err := dynamicallyLinked(file); err != nil {
		return Binary{}, fmt.Errorf("lucid binary %s: %w", file, err)
	} else if dynamic {
		return Binary{}, fmt.Errorf("%s is dynamically linked, and the images have no C library to run it: build it with CGO_ENABLED=0 (as make build does)", file)
	}
	b := Binary{Stamp: Stamp{Source: sourceURL}}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	b.GOOS, b.GOARCH, b.GOARM = settings["GOOS"], settings["GOARCH"], settings["GOARM"]

	stamped := linkerStrings(settings["-ldflags"])
	b.Stamp.Version, b.Stamp.Commit = stamped[buildinfoVersion], stamped[buildinfoCommit]
	if b.Stamp.Version == "" || b.Stamp.Commit == "" {
		if v, c, err := symbolStrings(file); err == nil {
			b.Stamp.Version = cmp.Or(b.Stamp.Version, v)
			b.Stamp.Commit = cmp.Or(b.Stamp.Commit, c)
		}
	}
	if v := info.Main.Version; b.Stamp.Version == "" && v != "" && v != "(devel)" {
		b.Stamp.Version = v
	}
	b.Stamp.Commit = cmp.Or(b.Stamp.Commit, settings["vcs.revision"], "unknown")
	if t, err := time.Parse(time.RFC3339, settings["vcs.time"]); err == nil {
		b.Stamp.Created = t.UTC()
	}
	return b, nil
}

// runsOn refuses a binary built for another platform than p.
func (b Binary) runsOn(p v1.Platform) error {
	arch, arm, err := goArch(p)
	if err != nil {
		return err
	}
	// GOARM is recorded as "7" or, since Go 1.22, possibly "7,hardfloat".
	goarm, _, _ := strings.Cut(b.GOARM, ",")
	if b.GOOS != p.OS || b.GOARCH != arch || (arm != "" && goarm != "" && goarm != arm) {
		built := b.GOOS + "/" + b.GOARCH
		if b.GOARM != "" {
			built += "/v" + goarm
		}
		return fmt.Errorf("built for %s, not %s", built, p)
	}
	return nil
}

// linkerStrings returns the -X name=value settings of an -ldflags value.
// Go records the flags quoted only when a value holds a space, which a
// version or commit never does, so splitting on spaces is enough here.
func linkerStrings(ldflags string) map[string]string {
	out := map[string]string{}
	fields := strings.Fields(ldflags)
	for i := 0; i < len(fields); i++ {
		var kv string
		switch f := fields[i]; {
		case (f == "-X" || f == "--X") && i+1 < len(fields):
			i++
			kv = fields[i]
		case strings.HasPrefix(f, "-X="), strings.HasPrefix(f, "--X="):
			_, kv, _ = strings.Cut(f, "=")
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// symbolStrings reads pkg/buildinfo's Version and Commit through the ELF
// symbol table: each is a string header (pointer, length) pointing at the
// bytes the linker stamped.
func symbolStrings(file string) (version, commit string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", "", err
	}
	defer func() { _ = f.Close() }() // only read
	syms, err := f.Symbols()
	if err != nil {
		return "", "", err
	}
	for _, s := range syms {
		switch s.Name {
		case buildinfoVersion:
			version, err = elfString(f, s.Value)
		case buildinfoCommit:
			commit, err = elfString(f, s.Value)
		}
		if err != nil {
			return "", "", err
		}
	}
	return version, commit, nil
}

// elfString reads the Go string whose header is at addr.
func elfString(f *elf.File, addr uint64) (string, error) {
	word := 8
	if f.Class == elf.ELFCLASS32 {
		word = 4
	}
	header, err := elfRead(f, addr, 2*word)
	if err != nil || header == nil {
		return "", err // nil: in .bss, never stamped
	}
	read := func(b []byte) uint64 {
		if word == 4 {
			return uint64(f.ByteOrder.Uint32(b))
		}
		return f.ByteOrder.Uint64(b)
	}
	ptr, n := read(header[:word]), read(header[word:])
	if n == 0 {
		return "", nil
	}
	if n > 1<<10 {
		return "", fmt.Errorf("a stamped string of %d bytes", n)
	}
	data, err := elfRead(f, ptr, int(n))
	if err != nil || data == nil {
		return "", errors.Join(err, errors.New("stamped string not in the file"))
	}
	return string(data), nil
}

// elfRead reads n bytes at virtual address addr; nil when they lie in a
// section without file contents.
func elfRead(f *elf.File, addr uint64, n int) ([]byte, error) {
	for _, s := range f.Sections {
		if s.Addr == 0 || addr < s.Addr || addr+uint64(n) > s.Addr+s.Size {
			continue
		}
		if s.Type == elf.SHT_NOBITS {
			return nil, nil
		}
		buf := make([]byte, n)
		if _, err := s.ReadAt(buf, int64(addr-s.Addr)); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return nil, fmt.Errorf("address %#x is in no section", addr)
}

func orNone(s string) string {
	if s == "" {
		return "no Go main package"
	}
	return s
}

// dynamicallyLinked reports whether an ELF file asks for a program
// interpreter (the C library's dynamic loader) to run.
func dynamicallyLinked(file string) (bool, error) {
	f, err := elf.Open(file)
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }() // only read
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}
