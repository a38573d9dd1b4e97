package portalloc

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/seed53641549/cnm/errdefs"
)

// ErrNoPorts reports that every port of the requested range, or of the
// ephemeral range, is taken. It wraps [errdefs.ErrInUse], so
// errors.Is(err, errdefs.ErrInUse) also holds. The wrapping message names
// the protocol, the host address and the range.
var ErrNoPorts error = noPortsError{}

type noPortsError struct{}

func (noPortsError) Error() string { return "every port is taken" }
func (noPortsError) Unwrap() error { return errdefs.ErrInUse }

// addrString writes a host address for messages, IPv6 in brackets, so that
// a port or a range can follow it.
func addrString(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// where names one binding: "tcp 0.0.0.0:8080", "udp [::1]:53".
func where(p proto, a netip.Addr, port uint16) string {
	return p.String() + " " + addrString(a) + ":" + strconv.Itoa(int(port))
}

// errMapped reports a port held by another mapping of this allocator.
func errMapped(p proto, a netip.Addr, port uint16) error {
	return fmt.Errorf("%s: %w by another mapping", where(p, a, port), errdefs.ErrInUse)
}

// errHostHeld reports a port held by a process in the host namespace.
func errHostHeld(p proto, a netip.Addr, port uint16) error {
	return fmt.Errorf("%s: %w by a process in the host namespace", where(p, a, port), errdefs.ErrInUse)
}

// errNoPorts reports a range with no free port; byHost of its ports were
// free of mappings but held by processes in the host namespace.
func errNoPorts(q query, byHost int) error {
	kind := "range"
	if q.ephemeral {
		kind = "ephemeral range"
	}
	err := fmt.Errorf("%s %s %s %d-%d: %w", q.proto, addrString(q.addr), kind, q.first, q.last, ErrNoPorts)
	if byHost > 0 {
		err = fmt.Errorf("%w (%d of them by processes in the host namespace)", err, byHost)
	}
	return err
}
