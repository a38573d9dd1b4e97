package osl

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// conntrackHandle returns a netfilter netlink handle opened inside ns.
func conntrackHandle(t *testing.T, ns *Namespace) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	require.NoError(t, ns.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
		return err
	}))
	t.Cleanup(h.Close)
	return h
}

// addFlow makes a conntrack entry in h's namespace for a flow from src to
// dst over proto (a UDP flow, or a TCP one in SYN_SENT).
func addFlow(t *testing.T, h *netlink.Handle, proto uint8, src, dst string) {
	t.Helper()
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	fam := uint8(unix.AF_INET)
	if s.Addr().Is6() {
		fam = unix.AF_INET6
	}
	flow := &netlink.ConntrackFlow{
		FamilyType: fam,
		Forward:    netlink.IPTuple{SrcIP: s.Addr().AsSlice(), DstIP: d.Addr().AsSlice(), SrcPort: s.Port(), DstPort: d.Port(), Protocol: proto},
		Reverse:    netlink.IPTuple{SrcIP: d.Addr().AsSlice(), DstIP: s.Addr().AsSlice(), SrcPort: d.Port(), DstPort: s.Port(), Protocol: proto},
		TimeOut:    100,
	}
	if proto == unix.IPPROTO_TCP {
		flow.ProtoInfo = &netlink.ProtoInfoTCP{State: 1} // TCP_CONNTRACK_SYN_SENT
	}
	require.NoError(t, h.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(fam), flow), "create conntrack entry %s -> %s", src, dst)
}

// flows lists the entries of h's namespace as "proto src -> dst".
func flows(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	var out []string
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		list, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		require.NoError(t, err)
		for _, f := range list {
			ap := func(ip net.IP, port uint16) string {
				a, _ := netip.AddrFromSlice(ip)
				return netip.AddrPortFrom(a.Unmap(), port).String()
			}
			proto := map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[f.Forward.Protocol]
			out = append(out, proto+" "+ap(f.Forward.SrcIP, f.Forward.SrcPort)+" -> "+ap(f.Forward.DstIP, f.Forward.DstPort))
		}
	}
	slices.Sort(out)
	return out
}

func TestDeleteConntrack(t *testing.T) {
	ctx := context.Background()
	ns := newTestNS(t)
	other := newTestNS(t)
	h := conntrackHandle(t, ns)
	ho := conntrackHandle(t, other)
	addFlow(t, ho, unix.IPPROTO_UDP, "198.51.100.1:1000", "198.51.100.2:53")
	for _, f := range [][2]string{
		{"198.51.100.1:1000", "198.51.100.2:53"},
		{"198.51.100.1:1001", "198.51.100.3:53"},
		{"198.51.100.1:1002", "198.51.100.2:54"},
		{"[2001:db8::1]:1000", "[2001:db8::2]:53"},
		{"[2001:db8::1]:1001", "[2001:db8::3]:53"},
	} {
		addFlow(t, h, unix.IPPROTO_UDP, f[0], f[1])
	}
	addFlow(t, h, unix.IPPROTO_TCP, "198.51.100.1:1003", "198.51.100.2:53")

	// One address and port, one protocol.
	n, err := ns.DeleteConntrack(ctx, "udp", netip.MustParseAddr("198.51.100.2"), 53)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, []string{
		"tcp 198.51.100.1:1003 -> 198.51.100.2:53",
		"udp 198.51.100.1:1001 -> 198.51.100.3:53",
		"udp 198.51.100.1:1002 -> 198.51.100.2:54",
		"udp [2001:db8::1]:1000 -> [2001:db8::2]:53",
		"udp [2001:db8::1]:1001 -> [2001:db8::3]:53",
	}, flows(t, h))

	// Every IPv4 address.
	n, err = ns.DeleteConntrack(ctx, "udp", netip.IPv4Unspecified(), 53)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	// Every IPv6 address.
	n, err = ns.DeleteConntrack(ctx, "udp", netip.IPv6Unspecified(), 53)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Equal(t, []string{
		"tcp 198.51.100.1:1003 -> 198.51.100.2:53",
		"udp 198.51.100.1:1002 -> 198.51.100.2:54",
	}, flows(t, h))

	// Nothing left to match.
	n, err = ns.DeleteConntrack(ctx, "udp", netip.IPv4Unspecified(), 53)
	require.NoError(t, err)
	assert.Zero(t, n)
	n, err = ns.DeleteConntrack(ctx, "tcp", netip.MustParseAddr("198.51.100.2"), 53)
	require.NoError(t, err)
	assert.Equal(t, 1, n)

	// The other namespace was not touched.
	assert.Equal(t, []string{"udp 198.51.100.1:1000 -> 198.51.100.2:53"}, flows(t, ho))
}

func TestDeleteConntrackInvalid(t *testing.T) {
	ctx := context.Background()
	ns := newTestNS(t)
	for _, tc := range []struct {
		name, proto string
		dst         netip.Addr
		port        uint16
		mention     string
	}{
		{"protocol", "icmp", netip.IPv4Unspecified(), 53, `protocol "icmp"`},
		{"no address", "udp", netip.Addr{}, 53, "destination"},
		{"mapped", "udp", netip.MustParseAddr("::ffff:198.51.100.2"), 53, "destination"},
		{"port 0", "udp", netip.IPv4Unspecified(), 0, "port 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ns.DeleteConntrack(ctx, tc.proto, tc.dst, tc.port)
			assert.ErrorContains(t, err, tc.mention)
		})
	}
	require.NoError(t, ns.Close())
	_, err := ns.DeleteConntrack(ctx, "udp", netip.IPv4Unspecified(), 53)
	assert.ErrorIs(t, err, ErrClosed)
}
