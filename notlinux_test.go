//go:build !linux

package cnm_test

import (
	"errors"
	"os"
	"testing"

	"github.com/seed53641549/cnm"
)

// TestNewNeedsLinux checks that New fails with ErrNotSupported off Linux,
// before it makes anything in its directories.
func TestNewNeedsLinux(t *testing.T) {
	data, run := t.TempDir(), t.TempDir()
	_, err := cnm.New(cnm.WithDataDir(data), cnm.WithRunDir(run))
	if !errors.Is(err, cnm.ErrNotSupported) {
		t.Fatalf("New: got %v, want an error wrapping ErrNotSupported", err)
	}
	for _, dir := range []string{data, run} {
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("New left %d files in %s", len(entries), dir)
		}
	}
}

// nftTables has no meaning off Linux.
func nftTables(t *testing.T, path string) []string {
	t.Skip("nftables exists on Linux only")
	return nil
}
