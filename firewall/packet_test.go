package firewall

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
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

func newTopology(t *testing.T) *topology {
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
func (tp *topology) requireOpen(t *testing.T) {
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
// not each other. With br_netfilter the inet rules see the bridged traffic;
// without it the bridge-family rule must, where the kernel has one.
func TestPacketICCOff(t *testing.T) {
	for _, tc := range []struct {
		name        string
		brNetfilter string
	}{
		{"br_netfilter", "1"},
		{"bridge_meta", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tp := newTopology(t)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-iptables", tc.brNetfilter)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-ip6tables", tc.brNetfilter)
			tp.requireOpen(t)

			f := openFirewall(t, tp.host)
			if tc.brNetfilter == "0" && !f.bridgeMeta {
				t.Skip("kernel lacks CONFIG_NFT_BRIDGE_META (meta ibrname/obrname); ICC off needs br_netfilter")
			}
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
			tp.requireOpen(t)
		})
	}
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
