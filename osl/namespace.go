package osl

import (
	"errors"
	"fmt"
)

// ID identifies a kernel network namespace: the device and inode of its nsfs
// file. Two paths name the same namespace exactly when their IDs are equal,
// and a path that now opens another namespace (a reused /proc/PID/ns/net, a
// re-pointed bind mount) shows another ID.
type ID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// IsZero reports whether id was never set (a record written before IDs were).
func (id ID) IsZero() bool { return id == ID{} }

// String returns "dev:ino".
func (id ID) String() string { return fmt.Sprintf("%d:%d", id.Dev, id.Ino) }

// ErrNotNamespace reports a path that exists but is not a network namespace
// file (an empty file left where a bind mount was, or any other file).
var ErrNotNamespace = errors.New("not a network namespace file")

// ErrClosed reports use of a [Namespace] after Close or Delete.
var ErrClosed = errors.New("namespace closed")
