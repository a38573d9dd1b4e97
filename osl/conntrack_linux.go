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
// ::) matches every destination address of its family. It is
// [Namespace.DeleteConntracks] with one match.
//
// Equivalent to: `conntrack -D -p $proto --orig-dst $dst --dport $dport`.
func (ns *Namespace) DeleteConntrack(ctx context.Context, proto string, dst netip.Addr, dport uint16) (int, error) {
	return ns.DeleteConntracks(ctx, ConntrackMatch{Proto: proto, Dst: dst, Port: dport})
}

// DeleteConntracks deletes the conntrack entries of this namespace that
// any of the matches selects, in one pass over the table per address
// family, and returns how many it deleted.
//
// A published port's conntrack entry keeps sending the flow where the port
// pointed when the flow began: a UDP client that keeps talking never lets
// its entry expire, so after the port moves to another container (or its
// container is gone) the entry must go. Delete after the change of the
// rules, or a packet in between makes the entry again.
//
// Entries are found by a dump of the namespace's table, so the cost grows
// with the number of tracked flows, not with the number of matches. The
// request goes through a netfilter netlink socket opened inside the
// namespace for the call (the package-level functions of
// vishvananda/netlink would open it in the caller's).
func (ns *Namespace) DeleteConntracks(ctx context.Context, matches ...ConntrackMatch) (int, error) {
	byFamily := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, m := range matches {
		f, err := m.filter()
		if err != nil {
			return 0, fmt.Errorf("delete conntrack entries: %w", err)
		}
		family := netlink.InetFamily(unix.AF_INET)
		if m.Dst.Is6() {
			family = unix.AF_INET6
		}
		byFamily[family] = append(byFamily[family], f)
	}
	if len(byFamily) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
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

	total := 0
	for family, filters := range byFamily {
		n, err := deleteConntrack(ctx, h, family, filters)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// ConntrackMatch selects conntrack entries by their original destination.
type ConntrackMatch struct {
	Proto string     // "tcp", "udp" or "sctp"
	Dst   netip.Addr // unspecified (0.0.0.0 or ::): every address of its family
	Port  uint16
}

func (m ConntrackMatch) filter() (*netlink.ConntrackFilter, error) {
	pnum, ok := conntrackProtocols[m.Proto]
	switch {
	case !ok:
		return nil, fmt.Errorf("protocol %q: must be tcp, udp or sctp", m.Proto)
	case !m.Dst.IsValid() || m.Dst.Zone() != "" || m.Dst.Is4In6():
		return nil, fmt.Errorf("destination %q: must be an IPv4 or IPv6 address without zone", m.Dst)
	case m.Port == 0:
		return nil, fmt.Errorf("destination port 0")
	}
	var f netlink.ConntrackFilter
	if err := f.AddProtocol(pnum); err != nil {
		return nil, err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, m.Port); err != nil {
		return nil, err
	}
	if !m.Dst.IsUnspecified() {
		if err := f.AddIPNet(netlink.ConntrackOrigDstIP, &net.IPNet{IP: m.Dst.AsSlice(), Mask: net.CIDRMask(m.Dst.BitLen(), m.Dst.BitLen())}); err != nil {
			return nil, err
		}
	}
	return &f, nil
}

// deleteConntrack deletes the entries of one family that any filter
// matches. The kernel marks a dump that the table changed under as
// interrupted, and the library then deletes what it read: dump again for
// the rest.
func deleteConntrack(ctx context.Context, h *netlink.Handle, family netlink.InetFamily, filters []netlink.CustomConntrackFilter) (int, error) {
	total := 0
	for range dumpRetries {
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
		total += int(n)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			if err != nil {
				return total, fmt.Errorf("delete conntrack entries: %w", err)
			}
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
	return total, fmt.Errorf("delete conntrack entries: dump interrupted %d times in a row: %w", dumpRetries, netlink.ErrDumpInterrupted)
}
