// Package store is cnm's key-value persistence: a small interface and its
// embedded default on go.etcd.io/bbolt, one file in the controller's data
// dir. (The overlay work adds an etcd implementation of the same interface
// for global state.)
//
// Keys are slash-separated strings; values are opaque bytes. Every key has
// a revision, the store-wide counter at its last write, for compare and swap.
// The interface has no watch: bbolt cannot notify; the etcd implementation
// for global state will add one where it is needed.
package store

import (
	"context"
	"errors"
)

var (
	// ErrNotFound reports a key that does not exist.
	ErrNotFound = errors.New("key not found")
	// ErrConflict reports a compare and swap whose revision did not match.
	ErrConflict = errors.New("revision conflict")
	// ErrLocked reports a store file held by another process (another
	// controller on the same data dir).
	ErrLocked = errors.New("store is locked by another process")
	// ErrCorrupt reports a store file that cannot be read. The file is left
	// as it is, never reset.
	ErrCorrupt = errors.New("store file is corrupt")
	// ErrSchema reports a store written by a newer version of cnm.
	ErrSchema = errors.New("store schema not supported")
)

// KV is one key with its value and revision.
type KV struct {
	Key      string
	Value    []byte
	Revision uint64
}

// Op is one write of an atomic [Store.Txn]: a put, or a delete when Delete
// is set.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Put returns the Op that writes value at key.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// Del returns the Op that deletes key.
func Del(key string) Op { return Op{Key: key, Delete: true} }

// Store is a key-value store. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the key's value, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key with the prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]KV, error)
	// Txn applies all ops atomically: all of them or none. Deleting a
	// missing key is not an error.
	Txn(ctx context.Context, ops ...Op) error
	// CompareAndSwap writes value at key only if the key's revision is rev
	// (0: only if the key does not exist), and returns the new revision. A
	// mismatch is an error wrapping ErrConflict.
	CompareAndSwap(ctx context.Context, key string, rev uint64, value []byte) (uint64, error)
	// Close releases the store. Safe to call twice.
	Close() error
}
