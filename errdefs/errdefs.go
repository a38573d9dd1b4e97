// Package errdefs holds the sentinel errors shared by every layer of cnm.
//
// The root package, the drivers and IPAM all wrap these sentinels with %w, so a
// caller can test any error from any layer with errors.Is, for example
// errors.Is(err, cnm.ErrInvalid). The root package re-exports each of them.
package errdefs

import "errors"

var (
	// ErrInvalid reports bad input: a malformed, out-of-range or unknown value.
	// The wrapping message names the field and the value.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound reports that a named or identified object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists reports that an object with the same name or key already exists.
	ErrExists = errors.New("already exists")
	// ErrInUse reports that an object cannot be removed or changed while
	// something still depends on it (a network with endpoints, a joined endpoint).
	ErrInUse = errors.New("in use")
	// ErrNotSupported reports that the kernel or the driver lacks a feature.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed reports use of a controller (or a part of it) after Close.
	ErrClosed = errors.New("closed")
)
