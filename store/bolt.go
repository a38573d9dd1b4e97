package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Schema is the layout version this code writes. A file with a higher
// schema is refused with ErrSchema; it is never rewritten.
const Schema = 1

// FileName is the store's file in the data dir.
const FileName = "cnm.db"

var (
	bucketData = []byte("data")
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
	keyRev     = []byte("revision")
)

// lockTimeout bounds how long Open waits for the file lock: a second
// controller on the same data dir fails at once instead of hanging.
const lockTimeout = 100 * time.Millisecond

// Bolt is the embedded [Store] on a bbolt file.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

// Open opens (or makes) the store file in dir. A file locked by another
// process is an error wrapping [ErrLocked]; an unreadable one [ErrCorrupt];
// one of a newer schema [ErrSchema]. None of them is ever overwritten.
// Every write is flushed to disk (fsync) before it returns.
func Open(dir string) (*Bolt, error) {
	return openFile(filepath.Join(dir, FileName), false)
}

func openFile(path string, noSync bool) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: make data dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, NoSync: noSync, NoFreelistSync: noSync})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("store %s: %w", path, ErrLocked)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return nil, fmt.Errorf("store %s: %w: %w", path, ErrCorrupt, err)
	case err != nil:
		if fi, serr := os.Stat(path); serr == nil && fi.Size() > 0 && !errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("store %s: %w: %w", path, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	b := &Bolt{db: db}
	if err := b.init(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return b, nil
}

// init makes the buckets of a new file and checks the schema of an old one.
func (b *Bolt) init() error {
	return b.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			if tx.Bucket(bucketData) != nil {
				return fmt.Errorf("%w: data without meta", ErrCorrupt)
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(bucketData); err != nil {
				return err
			}
			return meta.Put(keySchema, []byte(strconv.Itoa(Schema)))
		}
		v, err := strconv.Atoi(string(meta.Get(keySchema)))
		if err != nil {
			return fmt.Errorf("%w: schema %q", ErrCorrupt, meta.Get(keySchema))
		}
		if v > Schema {
			return fmt.Errorf("%w: file has schema %d, this cnm reads up to %d", ErrSchema, v, Schema)
		}
		if tx.Bucket(bucketData) == nil {
			return fmt.Errorf("%w: no data bucket", ErrCorrupt)
		}
		return nil
	})
}

// Values are stored as 8 bytes of revision followed by the caller's bytes.
func encode(rev uint64, v []byte) []byte {
	out := make([]byte, 8+len(v))
	binary.BigEndian.PutUint64(out, rev)
	copy(out[8:], v)
	return out
}

func decode(key, raw []byte) (KV, error) {
	if len(raw) < 8 {
		return KV{}, fmt.Errorf("%w: value of %q is %d bytes", ErrCorrupt, key, len(raw))
	}
	return KV{Key: string(key), Revision: binary.BigEndian.Uint64(raw), Value: bytes.Clone(raw[8:])}, nil
}

// nextRev bumps and returns the store-wide revision.
func nextRev(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	var rev uint64
	if v := meta.Get(keyRev); len(v) == 8 {
		rev = binary.BigEndian.Uint64(v)
	}
	rev++
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], rev)
	return rev, meta.Put(keyRev, buf[:])
}

// Get implements [Store].
func (b *Bolt) Get(ctx context.Context, key string) (KV, error) {
	if err := ctx.Err(); err != nil {
		return KV{}, err
	}
	var kv KV
	err := b.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketData).Get([]byte(key))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		var err error
		kv, err = decode([]byte(key), raw)
		return err
	})
	return kv, err
}

// List implements [Store].
func (b *Bolt) List(ctx context.Context, prefix string) ([]KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []KV
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketData).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			kv, err := decode(k, v)
			if err != nil {
				return err
			}
			out = append(out, kv)
		}
		return nil
	})
	return out, err
}

// Txn implements [Store].
func (b *Bolt) Txn(ctx context.Context, ops ...Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		rev, err := nextRev(tx)
		if err != nil {
			return err
		}
		data := tx.Bucket(bucketData)
		for _, op := range ops {
			if op.Key == "" {
				return fmt.Errorf("store: empty key")
			}
			if op.Delete {
				err = data.Delete([]byte(op.Key))
			} else {
				err = data.Put([]byte(op.Key), encode(rev, op.Value))
			}
			if err != nil {
				return fmt.Errorf("store: write %s: %w", op.Key, err)
			}
		}
		return nil
	})
}

// CompareAndSwap implements [Store].
func (b *Bolt) CompareAndSwap(ctx context.Context, key string, rev uint64, value []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var next uint64
	err := b.db.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketData)
		var cur uint64
		if raw := data.Get([]byte(key)); raw != nil {
			kv, err := decode([]byte(key), raw)
			if err != nil {
				return err
			}
			cur = kv.Revision
		}
		if cur != rev {
			return fmt.Errorf("%w: %s is at revision %d, not %d", ErrConflict, key, cur, rev)
		}
		var err error
		if next, err = nextRev(tx); err != nil {
			return err
		}
		return data.Put([]byte(key), encode(next, value))
	})
	return next, err
}

// Close implements [Store].
func (b *Bolt) Close() error {
	if b.db == nil {
		return nil
	}
	err := b.db.Close()
	b.db = nil
	return err
}
