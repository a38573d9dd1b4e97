package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T, dir string) *Bolt {
	t.Helper()
	s, err := Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltCRUD(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	_, err := s.Get(ctx, "a")
	require.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, s.Txn(ctx, Put("net/1", []byte("one")), Put("net/2", []byte("two")), Put("sb/1", []byte("x"))))
	kv, err := s.Get(ctx, "net/1")
	require.NoError(t, err)
	assert.Equal(t, "one", string(kv.Value))
	assert.Equal(t, uint64(1), kv.Revision)

	list, err := s.List(ctx, "net/")
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, "net/2", list[1].Key)

	require.NoError(t, s.Txn(ctx, Del("net/1"), Put("net/3", []byte("three")), Del("missing")))
	list, err = s.List(ctx, "net/")
	require.NoError(t, err)
	assert.Equal(t, []string{"net/2", "net/3"}, []string{list[0].Key, list[1].Key})
	assert.Equal(t, uint64(2), list[1].Revision)

	// A failing op undoes the whole transaction.
	err = s.Txn(ctx, Put("net/4", []byte("four")), Put("", nil))
	require.Error(t, err)
	_, err = s.Get(ctx, "net/4")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestBoltCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	rev, err := s.CompareAndSwap(ctx, "k", 0, []byte("v1"))
	require.NoError(t, err)
	_, err = s.CompareAndSwap(ctx, "k", 0, []byte("again"))
	require.ErrorIs(t, err, ErrConflict)
	rev2, err := s.CompareAndSwap(ctx, "k", rev, []byte("v2"))
	require.NoError(t, err)
	assert.Greater(t, rev2, rev)
	_, err = s.CompareAndSwap(ctx, "k", rev, []byte("stale"))
	require.ErrorIs(t, err, ErrConflict)
	kv, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "v2", string(kv.Value))
}

func TestBoltPersistsAcrossOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.Txn(ctx, Put("k", []byte("v"))))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")
	s = open(t, dir)
	kv, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "v", string(kv.Value))
}

func TestBoltSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	start := time.Now()
	_, err := Open(dir)
	require.ErrorIs(t, err, ErrLocked)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestBoltCorruptFileIsNeverReset(t *testing.T) {
	for name, content := range map[string][]byte{
		"garbage":   []byte("this is not a bbolt file, not at all, and it is long enough to have a header"),
		"truncated": nil, // filled below from a real store
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if content == nil {
				s, err := Open(dir)
				require.NoError(t, err)
				require.NoError(t, s.Txn(context.Background(), Put("k", []byte("v"))))
				require.NoError(t, s.Close())
				b, err := os.ReadFile(path)
				require.NoError(t, err)
				content = b[:100]
			}
			require.NoError(t, os.WriteFile(path, content, 0o600))
			_, err := Open(dir)
			require.ErrorIs(t, err, ErrCorrupt)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, content, after, "the file is left untouched")
		})
	}
}

func TestBoltNewerSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte("99"))
	}))
	require.NoError(t, s.Close())
	_, err = Open(dir)
	require.ErrorIs(t, err, ErrSchema)
	assert.ErrorContains(t, err, "schema 99")
}

func TestBoltUnwritableDataDir(t *testing.T) {
	if os.Geteuid() == 0 {
		// root writes anywhere; use a path under a regular file instead.
		f := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(f, nil, 0o600))
		_, err := Open(filepath.Join(f, "sub"))
		require.Error(t, err)
		assert.ErrorContains(t, err, "data dir")
		return
	}
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o500))
	_, err := Open(dir)
	require.Error(t, err)
}
