package cnm

import "github.com/seed53641549/cnm/errdefs"

// Sentinel errors. Every error of this package and of its drivers and IPAM
// wraps one of them, together with what failed and why.
var (
	// ErrInvalid: bad input; the message names the field and the value.
	ErrInvalid = errdefs.ErrInvalid
	// ErrNotFound: no object with that name or ID.
	ErrNotFound = errdefs.ErrNotFound
	// ErrExists: the name is taken, or the endpoint is already joined.
	ErrExists = errdefs.ErrExists
	// ErrInUse: the object still has dependants (a network with endpoints,
	// a joined endpoint).
	ErrInUse = errdefs.ErrInUse
	// ErrNotSupported: the driver or the kernel lacks the feature asked for.
	ErrNotSupported = errdefs.ErrNotSupported
	// ErrClosed: the controller was closed.
	ErrClosed = errdefs.ErrClosed
)
