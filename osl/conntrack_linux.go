package osl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// conntrackProtocols maps the protocols [Namespace.DeleteConntrack] takes to
// their IP protocol numbers.
var conntrackProtocols = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

// DeleteConntrack deletes the conntrack entries of this namespace whose
// original direction goes to dst:dport over proto ("tcp", "udp" or
// "sctp"), and returns how many it deleted. An unspecified dst (0.0.0.0 or
// ::) matches every destination address of its family.
//
// A published port's conntrack entry keeps sending the flow where the port
// pointed when the flow began: a UDP client that keeps talking never lets
// its entry expire, so after the port moves to another container (or its
// container is gone) the entry must go. Delete after the change of the
// rules, or a packet in between makes the entry again.
//
// Entries are found by a dump of the namespace's table, so the cost grows
// with the number of tracked flows. The request goes through a netfilter
// netlink socket opened inside the namespace for the call (the package-level
// functions of vishvananda/netlink would open it in the caller's).
//
// Equivalent to: `conntrack -D -p $proto --orig-dst $dst --dport $dport`.
func (ns *Namespace) DeleteConntrack(ctx context.Context, proto string, dst netip.Addr, dport uint16) (int, error) {
	pnum, ok := conntrackProtocols[proto]
	switch {
	case !ok:
		return 0, fmt.Errorf("delete conntrack entries: protocol %q: must be tcp, udp or sctp", proto)
	case !dst.IsValid() || dst.Zone() != "" || dst.Is4In6():
		return 0, fmt.Errorf("delete conntrack entries: destination %q: must be an IPv4 or IPv6 address without zone", dst)
	case dport == 0:
		return 0, fmt.Errorf("delete conntrack entries: destination port 0")
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var filter netlink.ConntrackFilter
	if err := filter.AddProtocol(pnum); err != nil {
		return 0, err
	}
	if err := filter.AddPort(netlink.ConntrackOrigDstPort, dport); err != nil {
		return 0, err
	}
	if !dst.IsUnspecified() {
		if err := filter.AddIPNet(netlink.ConntrackOrigDstIP, &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}); err != nil {
			return 0, err
		}
	}
	family := netlink.InetFamily(unix.AF_INET)
	if dst.Is6() {
		family = unix.AF_INET6
	}

	var h *netlink.Handle
	err := ns.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete conntrack entries: open netfilter netlink socket: %w", err)
	}
	defer h.Close()

	// The kernel marks a dump that the table changed under as interrupted,
	// and the library then deletes what it read: dump again for the rest.
	total := 0
	for range dumpRetries {
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, family, &filter)
		total += int(n)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			if err != nil {
				return total, fmt.Errorf("delete conntrack entries of %s %s: %w", proto, netip.AddrPortFrom(dst, dport), err)
			}
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
	return total, fmt.Errorf("delete conntrack entries of %s %s: dump interrupted %d times in a row: %w",
		proto, netip.AddrPortFrom(dst, dport), dumpRetries, netlink.ErrDumpInterrupted)
}
