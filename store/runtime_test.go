package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRuntimeStoreKeepsRecordsWithinABoot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenRuntime(dir, "boot-1")
	require.NoError(t, err)
	require.NoError(t, s.Txn(ctx, Put("sandbox/a", []byte("x"))))
	require.NoError(t, s.Close())

	s, err = OpenRuntime(dir, "boot-1")
	require.NoError(t, err)
	kv, err := s.Get(ctx, "sandbox/a")
	require.NoError(t, err, "same boot: the record is kept")
	require.Equal(t, "x", string(kv.Value))
	require.NoError(t, s.Close())
}

func TestRuntimeStoreOfAnEarlierBootIsDiscarded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenRuntime(dir, "boot-1")
	require.NoError(t, err)
	require.NoError(t, s.Txn(ctx, Put("sandbox/a", []byte("x"))))
	require.NoError(t, s.Close())

	s, err = OpenRuntime(dir, "boot-2")
	require.NoError(t, err)
	_, err = s.Get(ctx, "sandbox/a")
	require.ErrorIs(t, err, ErrNotFound, "another boot: the records are gone")
	require.NoError(t, s.Close())
}

func TestRuntimeStoreDamaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	require.NoError(t, os.WriteFile(path, []byte("not a bbolt file, not at all, and long enough to be read as one"), 0o600))

	// Written in this boot: refused, and left as it is.
	_, err := OpenRuntime(dir, "boot-1")
	require.ErrorIs(t, err, ErrCorrupt)
	b, _ := os.ReadFile(path)
	require.Contains(t, string(b), "not a bbolt file", "never overwritten")

	// Written before the machine booted: discarded.
	old := time.Unix(1000, 0)
	require.NoError(t, os.Chtimes(path, old, old))
	s, err := OpenRuntime(dir, "boot-1")
	require.NoError(t, err, "a damaged file of an earlier boot is never fatal")
	require.NoError(t, s.Close())
}

func TestRuntimeStoreBootIDFromKernel(t *testing.T) {
	id, err := BootID()
	require.NoError(t, err)
	require.Len(t, id, 36)
}
