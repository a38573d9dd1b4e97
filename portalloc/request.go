package portalloc

import (
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/errdefs"
)

// Request asks [Allocator.Allocate] for one host port.
type Request struct {
	// Proto is "tcp", "udp" or "sctp".
	Proto string
	// HostIP is the host address the port is published on. The unspecified
	// address (0.0.0.0 or ::) means every address of that family. It must
	// be valid, without a zone, and not an IPv4-mapped IPv6 address.
	HostIP netip.Addr
	// Port is the host port. 0: an ephemeral port, from [Config.Ephemeral].
	Port uint16
	// PortEnd, when not 0, makes the request a range Port..PortEnd
	// (inclusive): the first free port of it is taken. 0: Port alone.
	PortEnd uint16
}

// proto is a transport protocol, an index into per-protocol tables.
type proto uint8

const (
	tcp proto = iota
	udp
	sctp
	nProtos
)

var protoNames = [nProtos]string{tcp: "tcp", udp: "udp", sctp: "sctp"}

func (p proto) String() string { return protoNames[p] }

// parseProto returns the protocol named s, or an error wrapping
// errdefs.ErrInvalid.
func parseProto(s string) (proto, error) {
	for p, name := range protoNames {
		if s == name {
			return proto(p), nil
		}
	}
	return 0, fmt.Errorf("%w: protocol %q: want tcp, udp or sctp", errdefs.ErrInvalid, s)
}

// family is an index for per-family tables: 0 IPv4, 1 IPv6.
func family(a netip.Addr) int {
	if a.Is6() {
		return 1
	}
	return 0
}

// checkAddr validates a host address for protocol p.
func checkAddr(p proto, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%w: %s host address missing: want an address of the host, or 0.0.0.0 or :: for every address", errdefs.ErrInvalid, p)
	case a.Zone() != "":
		return fmt.Errorf("%w: %s host address %s: has a zone; give the address without one", errdefs.ErrInvalid, p, a)
	case a.Is4In6():
		return fmt.Errorf("%w: %s host address %s: an IPv4-mapped address; give the IPv4 address", errdefs.ErrInvalid, p, a)
	}
	return nil
}

// query is a validated [Request]: the ports first..last, searched from the
// start (a range) or from the next-fit cursor (ephemeral). A single port
// has first == last.
type query struct {
	proto       proto
	addr        netip.Addr
	first, last uint16
	ephemeral   bool
}

// check validates r, before any state is looked at. eph is the
// allocator's ephemeral range.
func (r Request) check(eph Range) (query, error) {
	p, err := parseProto(r.Proto)
	if err != nil {
		return query{}, err
	}
	if err := checkAddr(p, r.HostIP); err != nil {
		return query{}, err
	}
	q := query{proto: p, addr: r.HostIP, first: r.Port, last: r.Port}
	switch {
	case r.Port == 0 && r.PortEnd != 0:
		return query{}, fmt.Errorf("%w: %s %s range 0-%d: a range needs a first port", errdefs.ErrInvalid, p, addrString(r.HostIP), r.PortEnd)
	case r.Port == 0:
		q.first, q.last, q.ephemeral = eph.First, eph.Last, true
	case r.PortEnd != 0 && r.PortEnd < r.Port:
		return query{}, fmt.Errorf("%w: %s %s range %d-%d: ends below its start", errdefs.ErrInvalid, p, addrString(r.HostIP), r.Port, r.PortEnd)
	case r.PortEnd != 0:
		q.last = r.PortEnd
	}
	return q, nil
}

// single reports whether q asks for exactly one port.
func (q query) single() bool { return !q.ephemeral && q.first == q.last }
