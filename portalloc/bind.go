package portalloc

import (
	"fmt"

	"github.com/seed53641549/cnm/errdefs"
)

// bindResult is what a bind test found.
type bindResult int

const (
	bindFree     bindResult = iota // the bind succeeded: no process holds the port
	bindHeld                       // EADDRINUSE: a process holds the port
	bindNotLocal                   // EADDRNOTAVAIL: the address is not one of the host's
)

// probe runs the bind test of b in the host namespace, if one is
// configured. It reports whether a process there holds the port; an address
// that is not the host's is an error wrapping errdefs.ErrInvalid.
func (a *Allocator) probe(b binding) (held bool, err error) {
	if a.hostNS == nil {
		return false, nil
	}
	res, err := bindTest(a.hostNS, b)
	switch {
	case err != nil:
		return false, fmt.Errorf("%s: bind test in host namespace %s: %w", where(b.proto, b.addr, b.port), a.hostNS, err)
	case res == bindNotLocal:
		return false, fmt.Errorf("%w: %s: %s is not an address of the host namespace", errdefs.ErrInvalid, where(b.proto, b.addr, b.port), b.addr)
	}
	return res == bindHeld, nil
}
