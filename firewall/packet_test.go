//go:build linux

package firewall

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// topology is a host namespace with two bridges, two containers on each and
// an uplink to an "outside" namespace, dual-stack. Every container, the host
// and the outside run a TCP server on testPort that answers with the client
// address it sees.
//
//	a1 .2, a2 .3 -- brA .1 (198.18.1.0/24, 2001:db8:1::/64) \
//	                                                          host (forwarding) -- up0 .1 -- ext .2
//	b1 .2, b2 .3 -- brB .1 (198.18.2.0/24, 2001:db8:2::/64) /    (198.19.0.0/24, 2001:db8:ff::/64)
//
// The outside routes both bridge subnets to the host, so new connections from
// outside are stopped by the firewall and not by a missing route, and a
// source address that was not masqueraded still gets an answer.
type topology struct {
	host, ext      int // namespace fds
	a1, a2, b1, b2 int
}

// family holds the addresses of one IP version in the topology.
type family struct {
	name                              string
	subnetA, subnetB                  netip.Prefix
	gwA, gwB, a1, a2, b1, b2, up, ext netip.Addr
	uplink, bridges                   netip.Prefix
}

var (
	v4 = family{
		name: "ipv4", subnetA: pfx("198.18.1.0/24"), subnetB: pfx("198.18.2.0/24"),
		gwA: ip("198.18.1.1"), a1: ip("198.18.1.2"), a2: ip("198.18.1.3"),
		gwB: ip("198.18.2.1"), b1: ip("198.18.2.2"), b2: ip("198.18.2.3"),
		up: ip("198.19.0.1"), ext: ip("198.19.0.2"), uplink: pfx("198.19.0.0/24"), bridges: pfx("198.18.0.0/16"),
	}
	v6 = family{
		name: "ipv6", subnetA: pfx("2001:db8:1::/64"), subnetB: pfx("2001:db8:2::/64"),
		gwA: ip("2001:db8:1::1"), a1: ip("2001:db8:1::2"), a2: ip("2001:db8:1::3"),
		gwB: ip("2001:db8:2::1"), b1: ip("2001:db8:2::2"), b2: ip("2001:db8:2::3"),
		up: ip("2001:db8:ff::1"), ext: ip("2001:db8:ff::2"), uplink: pfx("2001:db8:ff::/64"), bridges: pfx("2001:db8::/45"),
	}
	families = []family{v4, v6}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// in returns addr with the prefix length of subnet.
func in(addr netip.Addr, subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(addr, subnet.Bits())
}

func newTopology(t testing.TB) *topology {
	t.Helper()
	var tp topology
	tp.host = newNS(t)
	writeSysctl(t, tp.host, "net/ipv4/ip_forward", "1")
	writeSysctl(t, tp.host, "net/ipv6/conf/all/forwarding", "1")
	h := handle(t, tp.host)
	brA := addBridge(t, h, "brA", in(v4.gwA, v4.subnetA), in(v6.gwA, v6.subnetA))
	brB := addBridge(t, h, "brB", in(v4.gwB, v4.subnetB), in(v6.gwB, v6.subnetB))
	container := func(br *netlink.Bridge, hostIf string, addr func(family) netip.Addr, gw func(family) netip.Addr, subnet func(family) netip.Prefix) int {
		var addrs []netip.Prefix
		var gws []netip.Addr
		for _, fam := range families {
			addrs = append(addrs, in(addr(fam), subnet(fam)))
			gws = append(gws, gw(fam))
		}
		return addContainer(t, tp.host, br, hostIf, addrs, gws)
	}
	subA := func(f family) netip.Prefix { return f.subnetA }
	subB := func(f family) netip.Prefix { return f.subnetB }
	tp.a1 = container(brA, "va1", func(f family) netip.Addr { return f.a1 }, func(f family) netip.Addr { return f.gwA }, subA)
	tp.a2 = container(brA, "va2", func(f family) netip.Addr { return f.a2 }, func(f family) netip.Addr { return f.gwA }, subA)
	tp.b1 = container(brB, "vb1", func(f family) netip.Addr { return f.b1 }, func(f family) netip.Addr { return f.gwB }, subB)
	tp.b2 = container(brB, "vb2", func(f family) netip.Addr { return f.b2 }, func(f family) netip.Addr { return f.gwB }, subB)
	tp.ext = addUplink(t, tp.host,
		[]netip.Prefix{in(v4.up, v4.uplink), in(v6.up, v6.uplink)},
		[]netip.Prefix{in(v4.ext, v4.uplink), in(v6.ext, v6.uplink)},
		[]netip.Addr{v4.up, v6.up}, []netip.Prefix{v4.bridges, v6.bridges})

	for _, fam := range families {
		for fd, addr := range map[int]netip.Addr{tp.a1: fam.a1, tp.a2: fam.a2, tp.b1: fam.b1, tp.b2: fam.b2, tp.ext: fam.ext} {
			serve(t, fd, addr, testPort)
		}
	}
	serve(t, tp.host, netip.IPv6Unspecified(), testPort) // both families
	return &tp
}

// requireOpen checks the paths that are open with no firewall at all, so that
// a blocked path later is known to be blocked by the rules.
func (tp *topology) requireOpen(t testing.TB) {
	t.Helper()
	for _, fam := range families {
		requireReach(t, tp.a1, fam.a2, fam.name+": a1 -> a2 without rules")
		requireReach(t, tp.a1, fam.b1, fam.name+": a1 -> b1 without rules")
		requireReach(t, tp.b1, fam.a1, fam.name+": b1 -> a1 without rules")
		requireReach(t, tp.ext, fam.a1, fam.name+": ext -> a1 without rules")
	}
}

// networks returns the firewall networks of brA and brB, dual-stack, with
// masquerade and ICC.
func networks() (a, b Network) {
	a = Network{ID: "A", Bridge: "brA", Subnets: []netip.Prefix{v4.subnetA, v6.subnetA}, Masquerade: true, ICC: true}
	b = Network{ID: "B", Bridge: "brB", Subnets: []netip.Prefix{v4.subnetB, v6.subnetB}, Masquerade: true, ICC: true}
	return a, b
}

// TestPacketIsolation: containers on one bridge talk to each other and to
// their gateway, not to the other bridge; outside is reached masqueraded and
// cannot open connections in. With br_netfilter on, bridged traffic also
// passes the inet rules; with it off only routed traffic does.
func TestPacketIsolation(t *testing.T) {
	for _, brNetfilter := range []string{"1", "0"} {
		t.Run("br_netfilter="+brNetfilter, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tp := newTopology(t)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-iptables", brNetfilter)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-ip6tables", brNetfilter)
			tp.requireOpen(t)

			f := openFirewall(t, tp.host)
			a, b := networks()
			require.NoError(t, f.AddNetwork(ctx, a))
			require.NoError(t, f.AddNetwork(ctx, b))

			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					assert.Equal(t, fam.a2.String(), requireReach(t, tp.a2, fam.a1, "a2 -> a1, same bridge (icc)"), "source rewritten")
					requireReach(t, tp.a1, fam.gwA, "a1 -> its gateway")
					requireReach(t, tp.b2, fam.b1, "b2 -> b1, same bridge (icc)")
					requireBlocked(t, tp.a1, fam.b1, "a1 -> b1, other bridge")
					requireBlocked(t, tp.b1, fam.a1, "b1 -> a1, other bridge")
					// The other bridge's gateway is an address of the host:
					// input, not forward, so the firewall does not stop it.
					requireReach(t, tp.a1, fam.gwB, "a1 -> gateway of the other bridge (the host)")
					requireBlocked(t, tp.ext, fam.a1, "ext -> a1, new connection from outside")
					assert.Equal(t, fam.up.String(), requireReach(t, tp.a1, fam.ext, "a1 -> ext"), "a1 not masqueraded")
					assert.Equal(t, fam.up.String(), requireReach(t, tp.b1, fam.ext, "b1 -> ext"), "b1 not masqueraded")
				})
			}

			// Removing the rules opens the paths again.
			require.NoError(t, f.RemoveNetwork(ctx, "A"))
			require.NoError(t, f.RemoveNetwork(ctx, "B"))
			assert.Zero(t, ruleCount(t, f))
			tp.requireOpen(t)
		})
	}
}

// TestPacketNoMasquerade: without Masquerade the container's own address
// leaves the host.
func TestPacketNoMasquerade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tp := newTopology(t)
	f := openFirewall(t, tp.host)
	a, _ := networks()
	a.Masquerade = false
	require.NoError(t, f.AddNetwork(ctx, a))
	for _, fam := range families {
		assert.Equal(t, fam.a1.String(), requireReach(t, tp.a1, fam.ext, fam.name+": a1 -> ext"))
	}
	require.NoError(t, f.RemoveNetwork(ctx, "A"))
}

// TestPacketICCOff: containers on a bridge without ICC reach the gateway but
// not each other. Each of two mechanisms stops them on its own: the firewall,
// when br_netfilter hands it the bridged traffic, and port isolation, which
// the bridge driver sets on every port and which needs no netfilter at all.
func TestPacketICCOff(t *testing.T) {
	for _, tc := range []struct {
		name         string
		brNetfilter  string
		isolatePorts bool
	}{
		{"firewall", "1", false},
		{"isolated_ports", "0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tp := newTopology(t)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-iptables", tc.brNetfilter)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-ip6tables", tc.brNetfilter)
			tp.requireOpen(t)
			isolate := func(on bool) {
				h := handle(t, tp.host)
				for _, port := range []string{"va1", "va2"} {
					l, err := h.LinkByName(port)
					require.NoError(t, err)
					require.NoError(t, h.LinkSetIsolated(l, on))
				}
			}
			if tc.isolatePorts {
				isolate(true)
			}

			f := openFirewall(t, tp.host)
			a, b := networks()
			a.ICC = false
			require.NoError(t, f.AddNetwork(ctx, a))
			require.NoError(t, f.AddNetwork(ctx, b))

			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					requireBlocked(t, tp.a1, fam.a2, "a1 -> a2, same bridge without icc")
					requireBlocked(t, tp.a2, fam.a1, "a2 -> a1, same bridge without icc")
					assert.Equal(t, fam.a1.String(), requireReach(t, tp.a1, fam.gwA, "a1 -> its gateway"))
					requireReach(t, tp.a2, fam.gwA, "a2 -> its gateway")
					requireReach(t, tp.b1, fam.b2, "b1 -> b2, same bridge with icc")
					requireBlocked(t, tp.a1, fam.b1, "a1 -> b1, other bridge")
					requireReach(t, tp.a1, fam.ext, "a1 -> ext")
				})
			}

			require.NoError(t, f.RemoveNetwork(ctx, "A"))
			require.NoError(t, f.RemoveNetwork(ctx, "B"))
			assert.Zero(t, ruleCount(t, f))
			if tc.isolatePorts {
				isolate(false)
			}
			tp.requireOpen(t)
		})
	}
}

// TestPacketFromOutside: the host forwards and the outside routes the
// containers' subnets through it, yet the outside cannot open a connection
// to a container: forwarding does not make the host a router into cnm's
// bridges. The container's own connection out works, masqueraded or not,
// with data both ways, and while it is open the outside still cannot open
// one back.
func TestPacketFromOutside(t *testing.T) {
	for _, masquerade := range []bool{true, false} {
		t.Run(fmt.Sprintf("masquerade=%v", masquerade), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tp := newTopology(t)
			for _, fam := range families {
				serveEcho(t, tp.ext, fam.ext)
			}
			tp.requireOpen(t) // ext -> a1 too: only the rules can stop it

			f := openFirewall(t, tp.host)
			a, _ := networks()
			a.Masquerade = masquerade
			require.NoError(t, f.AddNetwork(ctx, a))

			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					requireBlocked(t, tp.ext, fam.a1, "ext -> a1, new connection from outside")
					seen := fam.a1
					if masquerade {
						seen = fam.up
					}
					c, err := dialTCP(tp.a1, netip.AddrPortFrom(fam.ext, echoPort), okTimeout)
					require.NoError(t, err, "a1 -> ext")
					defer c.Close()
					requireBlocked(t, tp.ext, fam.a1, "ext -> a1 while a1 has a connection to ext")
					assert.Equal(t, seen.String()+" hello from a1", echo(t, c, "hello from a1"))
				})
			}
			require.NoError(t, f.RemoveNetwork(ctx, "A"))
			assert.Zero(t, ruleCount(t, f))
		})
	}
}

// TestPacketPublishedHook checks the published stage (`ct status dnat
// accept`, which New installs) on its own: the host DNATs two ports of its
// uplink address with a table of the test's own, one to a1 and one to b1 on
// an internal network. The DNAT'ed flow reaches a1, while a1's own address
// stays closed to the outside and the internal network stays closed to
// everything, even to a lone datagram that needs no answer.
func TestPacketPublishedHook(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tp := newTopology(t)
	f := openFirewall(t, tp.host)
	a, b := networks()
	b.Internal = true
	require.NoError(t, f.AddNetwork(ctx, a))
	require.NoError(t, f.AddNetwork(ctx, b))
	const toA, toB = 9090, 9091
	addDNAT(t, tp.host, map[uint16]func(family) netip.Addr{
		toA: func(fam family) netip.Addr { return fam.a1 },
		toB: func(fam family) netip.Addr { return fam.b1 },
	})

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			src, err := dialFrom(tp.ext, fam.up, toA, okTimeout)
			require.NoError(t, err, "ext -> a1 through DNAT")
			assert.Equal(t, fam.ext.String(), src, "a1 sees the outside's address")
			requireBlocked(t, tp.ext, fam.a1, "ext -> a1 directly")
			requireTimeout(t, tp.ext, netip.AddrPortFrom(fam.up, toB), "ext -> b1 through DNAT, internal network")
			requireReach(t, tp.a1, fam.ext, "a1 -> ext")
			assert.True(t, udpArrives(t, tp.ext, netip.AddrPortFrom(fam.up, toA), tp.a1, fam.a1),
				"udp ext -> a1 through DNAT")
			assert.False(t, udpArrives(t, tp.ext, netip.AddrPortFrom(fam.up, toB), tp.b1, fam.b1),
				"udp ext -> b1 through DNAT, internal network")
		})
	}
	require.NoError(t, f.RemoveNetwork(ctx, "A"))
	require.NoError(t, f.RemoveNetwork(ctx, "B"))
}

// addDNAT makes a table "dnat" in namespace fd, deleted at the end of the
// test, that DNATs TCP and UDP to the uplink address (v4 and v6) on each
// port of to to the address to gives, port testPort:
//
//	ip daddr <up> th dport <port> dnat to <addr>:testPort
func addDNAT(t testing.TB, fd int, to map[uint16]func(family) netip.Addr) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	tbl := c.AddTable(&nftables.Table{Name: "dnat", Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	for port, addr := range to {
		for _, fam := range families {
			proto, daddr := byte(unix.NFPROTO_IPV4), uint32(16) // daddr offset in the IPv4 header
			if fam.up.Is6() {
				proto, daddr = unix.NFPROTO_IPV6, 24
			}
			c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: uint32(fam.up.BitLen() / 8)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: fam.up.AsSlice()},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
				&expr.Immediate{Register: 1, Data: addr(fam).AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(testPort)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(proto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}})
		}
	}
	require.NoError(t, c.Flush())
	t.Cleanup(func() {
		c.DelTable(tbl)
		require.NoError(t, c.Flush())
	})
}

// TestPacketInternal: an internal network talks within its bridge and to the
// host, and to nothing else in either direction.
func TestPacketInternal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tp := newTopology(t)
	tp.requireOpen(t)

	f := openFirewall(t, tp.host)
	a, b := networks()
	a.Internal = true
	require.NoError(t, f.AddNetwork(ctx, a))
	require.NoError(t, f.AddNetwork(ctx, b))

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			requireReach(t, tp.a1, fam.a2, "a1 -> a2, same internal bridge")
			requireReach(t, tp.a1, fam.gwA, "a1 -> its gateway (the host)")
			requireBlocked(t, tp.a1, fam.b1, "a1 -> b1, other bridge")
			requireBlocked(t, tp.b1, fam.a1, "b1 -> a1, into the internal bridge")
			requireBlocked(t, tp.a1, fam.ext, "a1 -> ext, out of the internal bridge")
			requireBlocked(t, tp.ext, fam.a1, "ext -> a1, into the internal bridge")
			requireReach(t, tp.b1, fam.ext, "b1 -> ext, not internal")
		})
	}

	require.NoError(t, f.RemoveNetwork(ctx, "A"))
	require.NoError(t, f.RemoveNetwork(ctx, "B"))
	assert.Zero(t, ruleCount(t, f))
	tp.requireOpen(t)
}

// udpArrives sends one datagram from namespace from to to, and reports
// whether a socket on addr:testPort in namespace at receives it.
func udpArrives(t testing.TB, from int, to netip.AddrPort, at int, addr netip.Addr) bool {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, inNS(at, func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, testPort).String())
		return err
	}))
	defer pc.Close()
	var c net.Conn
	require.NoError(t, inNS(from, func() error {
		var err error
		c, err = net.Dial("udp", to.String())
		return err
	}))
	defer c.Close()
	_, err := c.Write([]byte("hello"))
	require.NoError(t, err)
	_ = pc.SetReadDeadline(time.Now().Add(blockedTimeout))
	_, _, err = pc.ReadFrom(make([]byte, 16))
	return err == nil
}
