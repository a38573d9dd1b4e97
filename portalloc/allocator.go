package portalloc

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
)

// Range is an inclusive range of ports, First through Last.
type Range struct{ First, Last uint16 }

// DefaultEphemeral is the ephemeral range used when [Config.Ephemeral] is
// zero: Docker's default, 49153-65535.
var DefaultEphemeral = Range{First: 49153, Last: 65535}

// Config configures the allocator returned by [New].
type Config struct {
	// HostNS is the namespace where the bind test opens its sockets: the
	// controller's host namespace, where published ports are reached. For
	// each port it would hand out, the allocator binds a socket of the
	// protocol to the host address and port there, and closes it at once: a
	// port a process holds (EADDRINUSE) is refused or passed over, and an
	// address the namespace does not have (EADDRNOTAVAIL) is bad input. TCP
	// binds with SO_REUSEADDR and never listens, so it passes over TIME_WAIT
	// connections but never over a listener; UDP and SCTP set no option;
	// IPv6 sockets are IPV6_V6ONLY. SCTP is tested only when the kernel has
	// the sctp module loaded: the test never loads it. Off Linux the test
	// fails with errdefs.ErrNotSupported.
	//
	// Nil: no bind test, only the allocator's own mappings are checked (for
	// unit tests, or a caller that checks ports itself).
	HostNS *osl.Namespace
	// Ephemeral is the range that requests without a port take theirs from.
	// Zero: [DefaultEphemeral]. Otherwise First must be at least 1 and not
	// above Last.
	Ephemeral Range
}

// Allocator hands out host ports for published ports. Make one with [New].
//
// It is safe for concurrent use; it never holds its lock during a bind
// test. Allocate, Release and Reserve take O(1) time, except the search of
// a range or of the ephemeral range, which looks at each port of the range
// at most once (see the package doc). A call that returns an error holds
// no port.
type Allocator struct {
	hostNS    *osl.Namespace // read-only after New
	ephemeral Range          // read-only after New

	mu   sync.Mutex // guards the fields below
	held table      // the bindings held, and those under a bind test
	// next is where the next ephemeral search starts, per protocol and
	// address family: the port after the one handed out last. 0, or a port
	// outside the range: its first port.
	next [nProtos][2]uint16
}

// New returns an allocator that holds no port. It fails with an error
// wrapping errdefs.ErrInvalid when cfg.Ephemeral is not a valid range.
func New(cfg Config) (*Allocator, error) {
	eph := cfg.Ephemeral
	if eph == (Range{}) {
		eph = DefaultEphemeral
	}
	if eph.First == 0 || eph.Last < eph.First {
		return nil, fmt.Errorf("%w: ephemeral range %d-%d: want 1 <= first <= last", errdefs.ErrInvalid, eph.First, eph.Last)
	}
	return &Allocator{hostNS: cfg.HostNS, ephemeral: eph, held: newTable()}, nil
}

// Allocate takes a host port for r and returns it: r.Port itself, the first
// free port of r.Port..r.PortEnd, or, with r.Port 0, a port of the
// ephemeral range (next fit, see the package doc). The port stays taken
// until [Allocator.Release].
//
// A port is free when no binding held conflicts with it (see the package
// doc) and, with a host namespace configured, the bind test finds no
// process holding it there. Errors: bad input wraps errdefs.ErrInvalid (as
// does a host address that is not the host namespace's); a single port
// that is taken wraps errdefs.ErrInUse, naming who holds it; a range or the
// ephemeral range with no free port wraps [ErrNoPorts]. Each names the
// protocol, the address and the port or range.
func (a *Allocator) Allocate(ctx context.Context, r Request) (uint16, error) {
	q, err := r.check(a.ephemeral)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if q.single() {
		b := binding{q.proto, q.addr, q.first}
		a.mu.Lock()
		conflict := a.held.conflicts(b)
		if !conflict {
			a.held.add(b)
		}
		a.mu.Unlock()
		if conflict {
			return 0, errMapped(q.proto, q.addr, q.first)
		}
		held, err := a.probe(b)
		if err == nil && held {
			err = errHostHeld(q.proto, q.addr, q.first)
		}
		if err != nil {
			a.release(b)
			return 0, err
		}
		return b.port, nil
	}
	return a.search(ctx, q)
}

// search takes the first free port of q's range, starting at the next-fit
// cursor for an ephemeral request. It looks at each port at most once: a
// port that fails the bind test is passed over, and the search goes on
// after it.
func (a *Allocator) search(ctx context.Context, q query) (uint16, error) {
	span := int(q.last-q.first) + 1
	start := q.first
	if q.ephemeral {
		a.mu.Lock()
		if n := a.next[q.proto][family(q.addr)]; n >= q.first && n <= q.last {
			start = n
		}
		a.mu.Unlock()
	}
	byHost := 0
	for seen := 0; seen < span; {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		a.mu.Lock()
		b, n, ok := a.firstFreeLocked(q, start, span-seen)
		if ok {
			a.held.add(b)
			if q.ephemeral {
				a.next[q.proto][family(q.addr)] = b.port + 1 // 65535+1 wraps to 0: the first port
			}
		}
		a.mu.Unlock()
		if !ok {
			break
		}
		held, err := a.probe(b)
		if err == nil && !held {
			return b.port, nil
		}
		a.release(b)
		if err != nil {
			return 0, err
		}
		byHost++
		seen += n
		start = b.port + 1
		if b.port == q.last {
			start = q.first
		}
	}
	return 0, errNoPorts(q, byHost)
}

// firstFreeLocked looks at up to limit ports of q's range from start on,
// wrapping at its end, and returns the first one free of bindings and how
// many ports it looked at.
func (a *Allocator) firstFreeLocked(q query, start uint16, limit int) (binding, int, bool) {
	span := int(q.last-q.first) + 1
	off := int(start - q.first)
	for i := range limit {
		b := binding{q.proto, q.addr, q.first + uint16((off+i)%span)}
		if !a.held.conflicts(b) {
			return b, i + 1, true
		}
	}
	return binding{}, 0, false
}

// Release frees a port taken by [Allocator.Allocate] or
// [Allocator.Reserve], with the protocol and host address it was taken for.
// Releasing a port that is not held, or with bad arguments, does nothing.
// Safe to call twice.
func (a *Allocator) Release(proto string, hostIP netip.Addr, port uint16) {
	p, err := parseProto(proto)
	if err != nil || checkAddr(p, hostIP) != nil {
		return
	}
	a.release(binding{p, hostIP, port})
}

func (a *Allocator) release(b binding) {
	a.mu.Lock()
	a.held.remove(b)
	a.mu.Unlock()
}

// Reserve takes a given port back without a bind test: for a controller
// that restores the mappings it recorded before a restart, whose ports its
// own rules may already serve. A port that conflicts with a binding held
// is an error wrapping errdefs.ErrInUse; bad input (port 0 included), one
// wrapping errdefs.ErrInvalid. The next-fit cursor does not move.
func (a *Allocator) Reserve(proto string, hostIP netip.Addr, port uint16) error {
	p, err := parseProto(proto)
	if err != nil {
		return err
	}
	if err := checkAddr(p, hostIP); err != nil {
		return err
	}
	if port == 0 {
		return fmt.Errorf("%w: %s: reserve needs a port", errdefs.ErrInvalid, where(p, hostIP, port))
	}
	b := binding{p, hostIP, port}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held.conflicts(b) {
		return errMapped(p, hostIP, port)
	}
	a.held.add(b)
	return nil
}
