package cnm_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

const tcpTimeout = 2 * time.Second

// blockedTimeout is how long a connection that must fail is given.
const blockedTimeout = 300 * time.Millisecond

// container makes a sandbox with one endpoint on nw, joined.
func container(t *testing.T, nw *cnm.Network, name string, opts ...cnm.EndpointOption) (*cnm.Sandbox, *cnm.Endpoint) {
	t.Helper()
	ctx := context.Background()
	sb, err := nw.Controller().NewSandbox(ctx, name, cnm.WithHostname(name))
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, name, opts...)
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	return sb, ep
}

func addrPort(p netip.Prefix, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.Addr(), port) }

func TestBridgeTwoSandboxesTalk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)

	nw, err := ctrl.NewNetwork(ctx, "bridge", "frontend",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.10.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-fe"}),
	)
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")

	ia, ib := epA.Info(), epB.Info()
	assert.Equal(t, "eth0", ia.InterfaceName)
	assert.Equal(t, netip.MustParsePrefix("10.10.0.2/24"), ia.IPv4)
	assert.Equal(t, netip.MustParsePrefix("10.10.0.3/24"), ib.IPv4)
	assert.Equal(t, netip.MustParseAddr("10.10.0.1"), ia.Gateway)
	assert.Equal(t, a.ID(), ia.SandboxID)

	// Kernel state: the bridge carries the gateway; the sandbox's eth0 has the
	// endpoint's MAC and address and a default route via the gateway.
	br, err := host.NS.LinkByName(ctx, "br-fe")
	require.NoError(t, err)
	assert.True(t, br.Up)
	addrs, err := host.NS.Addresses(ctx, br.Index)
	require.NoError(t, err)
	assert.Contains(t, addrs, netip.MustParsePrefix("10.10.0.1/24"))
	sbNS, err := osl.OpenNamespace(ctx, a.Key())
	require.NoError(t, err)
	eth0, err := sbNS.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, ia.MAC, eth0.MAC)
	assert.True(t, eth0.Up)
	routes, err := sbNS.Routes(ctx, 4)
	require.NoError(t, err)
	assert.Contains(t, routes, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.10.0.1"), LinkIndex: eth0.Index})
	sbAddrs, err := sbNS.Addresses(ctx, eth0.Index)
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{ia.IPv4}, sbAddrs, "an IPv4-only interface gets no IPv6 link-local address")
	sbNS.Close() // an open handle would keep the namespace alive after Delete

	// TCP both ways, and to the gateway (the host side).
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(ib.IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(ia.IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, a.Key(), netip.MustParseAddrPort("10.10.0.1:9000"), tcpTimeout))

	// hosts file names the sandbox on its address.
	hosts, err := os.ReadFile(a.HostsPath())
	require.NoError(t, err)
	assert.Contains(t, string(hosts), "10.10.0.2\ta\n")

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestBridgeIsolationBetweenNetworks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	n1, err := ctrl.NewNetwork(ctx, "bridge", "one", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.1.0.0/24")}))
	require.NoError(t, err)
	n2, err := ctrl.NewNetwork(ctx, "bridge", "two", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.2.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, n1, "a")
	b, epB := container(t, n2, "b")

	// Both have a default route through their own gateway, and the host
	// forwards, but the firewall keeps the networks apart.
	err = cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 80), blockedTimeout)
	assert.Error(t, err, "network one must not reach network two")
	err = cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv4, 80), blockedTimeout)
	assert.Error(t, err, "network two must not reach network one")

	// A sandbox on both networks reaches both.
	c, err := ctrl.NewSandbox(ctx, "c")
	require.NoError(t, err)
	c1, err := n1.CreateEndpoint(ctx, "c1")
	require.NoError(t, err)
	c2, err := n2.CreateEndpoint(ctx, "c2")
	require.NoError(t, err)
	require.NoError(t, c1.Join(ctx, c))
	require.NoError(t, c2.Join(ctx, c))
	assert.Equal(t, "eth1", c2.Info().InterfaceName)
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), c.Key(), addrPort(epA.Info().IPv4, 81), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), c.Key(), addrPort(epB.Info().IPv4, 81), tcpTimeout))

	for _, sb := range []*cnm.Sandbox{a, b, c} {
		require.NoError(t, sb.Delete(ctx))
	}
	require.NoError(t, n1.Delete(ctx))
	require.NoError(t, n2.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// TestBridgeICCDisabled checks icc=false with br_netfilter on (bridged
// frames also pass the nftables forward hook) and off (only the bridge's
// port isolation stands between the containers).
func TestBridgeICCDisabled(t *testing.T) {
	t.Parallel()
	for _, brNetfilter := range []string{"1", "0"} {
		t.Run("bridge-nf-call="+brNetfilter, func(t *testing.T) {
			ctx := context.Background()
			ctrl, host := cnmtest.NewController(t)
			for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
				require.NoError(t, host.NS.SetSysctl(k, brNetfilter))
			}
			nw, err := ctrl.NewNetwork(ctx, "bridge", "noicc",
				cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.3.0.0/24")}),
				cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.enable_icc": "false"}))
			require.NoError(t, err)
			a, _ := container(t, nw, "a")
			b, epB := container(t, nw, "b")

			err = cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 80), blockedTimeout)
			assert.Error(t, err, "icc=false must block container to container")
			require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, a.Key(), netip.MustParseAddrPort("10.3.0.1:80"), tcpTimeout),
				"icc=false still lets a container reach its gateway")

			require.NoError(t, a.Delete(ctx))
			require.NoError(t, b.Delete(ctx))
			require.NoError(t, nw.Delete(ctx))
			cnmtest.AssertNoLeaks(t, host)
		})
	}
}

func TestBridgeInternalHasNoWayOut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	internal, err := ctrl.NewNetwork(ctx, "bridge", "internal", cnm.WithInternal(),
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.4.0.0/24")}))
	require.NoError(t, err)
	other, err := ctrl.NewNetwork(ctx, "bridge", "other", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.5.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, internal, "a")
	b, _ := container(t, internal, "b")
	o, epO := container(t, other, "o")

	assert.False(t, epA.Info().Gateway.IsValid(), "internal endpoints offer no gateway")
	ns, err := osl.OpenNamespace(ctx, a.Key())
	require.NoError(t, err)
	routes, err := ns.Routes(ctx, 4)
	require.NoError(t, err)
	for _, r := range routes {
		assert.NotEqual(t, 0, r.Dst.Bits(), "no default route in an internal sandbox: %v", r)
	}
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), netip.AddrPortFrom(netip.MustParseAddr("10.4.0.3"), 80), tcpTimeout),
		"internal sandboxes reach each other")
	// Even with a route, traffic out of the internal bridge is dropped.
	require.NoError(t, ns.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("10.5.0.0/24"), Gateway: netip.MustParseAddr("10.4.0.1"), LinkIndex: 2}))
	err = cnmtest.TCPExchange(ctx, o.Key(), a.Key(), addrPort(epO.Info().IPv4, 80), blockedTimeout)
	assert.Error(t, err, "internal network must not reach another network")
	ns.Close()

	for _, sb := range []*cnm.Sandbox{a, b, o} {
		require.NoError(t, sb.Delete(ctx))
	}
	require.NoError(t, internal.Delete(ctx))
	require.NoError(t, other.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestBridgeMasqueradeToUpstream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	// An "upstream" namespace reached from the host namespace over a veth
	// pair stands in for the outside world.
	up, err := osl.NewNamespace(ctx, t.TempDir()+"/upstream")
	require.NoError(t, err)
	defer up.Delete()
	require.NoError(t, host.NS.AddVeth(ctx, osl.VethSpec{HostName: "uplink", PeerName: "wan0", PeerNS: up}))
	ul, err := host.NS.LinkByName(ctx, "uplink")
	require.NoError(t, err)
	require.NoError(t, host.NS.AddAddress(ctx, ul.Index, netip.MustParsePrefix("192.0.2.1/24")))
	require.NoError(t, host.NS.SetLinkUp(ctx, ul.Index))
	wl, err := up.LinkByName(ctx, "wan0")
	require.NoError(t, err)
	require.NoError(t, up.AddAddress(ctx, wl.Index, netip.MustParsePrefix("192.0.2.2/24")))
	require.NoError(t, up.SetLinkUp(ctx, wl.Index))

	nw, err := ctrl.NewNetwork(ctx, "bridge", "web", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.6.0.0/24")}))
	require.NoError(t, err)
	a, _ := container(t, nw, "a")

	// upstream has no route back to 10.6.0.0/24: only masquerade makes this work.
	l, err := cnmtest.Listen(ctx, up.Path(), netip.MustParseAddrPort("192.0.2.2:443"))
	require.NoError(t, err)
	defer l.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		peer <- c.RemoteAddr().String()
		c.Close()
	}()
	c, err := cnmtest.Dial(ctx, a.Key(), netip.MustParseAddrPort("192.0.2.2:443"), tcpTimeout)
	require.NoError(t, err)
	c.Close()
	assert.True(t, strings.HasPrefix(<-peer, "192.0.2.1:"), "upstream sees the host's address")

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	require.NoError(t, host.NS.DeleteLink(ctx, "uplink"))
	cnmtest.AssertNoLeaks(t, host)
}

func TestBridgeMTUAndGeneratedName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "jumbo",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.7.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.mtu": "1400"}))
	require.NoError(t, err)
	a, _ := container(t, nw, "a")

	brName := "br-" + nw.ID()[:12] // Docker's naming when no name is given
	br, err := host.NS.LinkByName(ctx, brName)
	require.NoError(t, err)
	assert.Equal(t, 1400, br.MTU)
	assert.Equal(t, "cnm:"+ctrl.ID()+":"+nw.ID(), br.Alias, "the bridge is marked as this network's, by this controller")
	ns, err := osl.OpenNamespace(ctx, a.Key())
	require.NoError(t, err)
	eth0, err := ns.LinkByName(ctx, "eth0")
	ns.Close()
	require.NoError(t, err)
	assert.Equal(t, 1400, eth0.MTU)
	fwd, err := host.NS.Sysctl("net.ipv4.ip_forward")
	require.NoError(t, err)
	assert.Equal(t, "1", fwd, "a non-internal bridge network turns forwarding on")

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}
