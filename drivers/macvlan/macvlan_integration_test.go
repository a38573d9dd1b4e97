package macvlan_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/subif/subiftest"
	"github.com/seed53641549/cnm/osl"
)

const (
	tcpTimeout     = 2 * time.Second
	blockedTimeout = 300 * time.Millisecond
)

var (
	lanSubnet = netip.MustParsePrefix("192.168.50.0/24")
	router    = netip.MustParseAddr("192.168.50.254")
)

// lan is a throwaway "physical" network for a controller's host namespace:
// the host's eth1 is one end of a veth pair whose other end, up0, is a port
// of switch sw0 in an upstream namespace; sw0 carries the router's address.
type lan struct {
	upstream *osl.Namespace
}

// newLAN plugs the host namespace h into a new upstream namespace (see
// subiftest.NewLAN). With hairpin the switch port sends frames back the way
// they came (what VEPA mode needs to reach a neighbour on the same parent).
func newLAN(t *testing.T, h *cnmtest.HostNS, hairpin bool) *lan {
	t.Helper()
	return &lan{upstream: subiftest.NewLAN(t, h.NS, netip.PrefixFrom(router, lanSubnet.Bits()), hairpin)}
}

// lanNetwork makes a macvlan network on eth1 with the LAN's subnet and router.
func lanNetwork(t *testing.T, ctrl *cnm.Controller, name string, opts map[string]string) *cnm.Network {
	t.Helper()
	if opts == nil {
		opts = map[string]string{}
	}
	if _, ok := opts["parent"]; !ok {
		opts["parent"] = "eth1"
	}
	nw, err := ctrl.NewNetwork(context.Background(), "macvlan", name,
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet, Gateway: router}),
		cnm.WithDriverOptions(opts))
	require.NoError(t, err)
	return nw
}

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

// TestMacvlanModes checks each mode against the kernel's definition, with an
// upstream switch that does or does not hairpin: bridge mode switches
// between containers inside the kernel; private never lets two containers
// of one parent talk, even through a hairpinning switch; VEPA sends
// everything out, so containers talk only through a hairpinning switch.
// In every mode both containers reach the router upstream, whose address is
// their gateway and default route.
func TestMacvlanModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode     string
		hairpin  bool
		neighbor bool // containers reach each other
	}{
		{"bridge", false, true},
		{"private", false, false},
		{"private", true, false},
		{"vepa", false, false},
		{"vepa", true, true},
	} {
		name := tc.mode
		if tc.hairpin {
			name += "/hairpin-switch"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			ctrl, host := cnmtest.NewController(t)
			l := newLAN(t, host, tc.hairpin)
			hostBefore := subiftest.LinkNames(t, host.Path)

			nw := lanNetwork(t, ctrl, "lan", map[string]string{"macvlan_mode": tc.mode})
			assert.Equal(t, hostBefore, subiftest.LinkNames(t, host.Path), "a network on an existing parent makes no host link")
			a, epA := container(t, nw, "a")
			b, epB := container(t, nw, "b")
			assert.Equal(t, hostBefore, subiftest.LinkNames(t, host.Path), "endpoints make no host link")

			ia, ib := epA.Info(), epB.Info()
			assert.Equal(t, "eth0", ia.InterfaceName)
			assert.Equal(t, router, ia.Gateway, "the gateway is the physical network's router")
			assert.Equal(t, netip.MustParsePrefix("192.168.50.1/24"), ia.IPv4, "the router's address is not handed out")
			assert.Equal(t, []string{"eth0/macvlan", "lo/device"}, subiftest.LinkNames(t, a.Key()))
			sbNS, err := osl.OpenNamespace(ctx, a.Key())
			require.NoError(t, err)
			eth0, err := sbNS.LinkByName(ctx, "eth0")
			require.NoError(t, err)
			assert.Equal(t, ia.MAC, eth0.MAC)
			assert.Equal(t, 1500, eth0.MTU, "MTU from the parent")
			routes, err := sbNS.Routes(ctx, 4)
			require.NoError(t, err)
			assert.Contains(t, routes, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: router, LinkIndex: eth0.Index})
			sbNS.Close()

			for _, sb := range []*cnm.Sandbox{a, b} {
				require.NoError(t, cnmtest.TCPExchange(ctx, l.upstream.Path(), sb.Key(), netip.AddrPortFrom(router, 80), tcpTimeout),
					"%s reaches the router upstream", sb.ContainerID())
			}
			err = cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(ib.IPv4, 8080), tcpTimeout)
			if tc.neighbor {
				require.NoError(t, err, "a reaches b")
				require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(ia.IPv4, 8080), tcpTimeout), "b reaches a")
			} else {
				err = cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(ib.IPv4, 8081), blockedTimeout)
				assert.Error(t, err, "a must not reach b in %s mode", tc.mode)
			}

			require.NoError(t, a.Delete(ctx))
			require.NoError(t, b.Delete(ctx))
			require.NoError(t, nw.Delete(ctx))
			assert.Equal(t, hostBefore, subiftest.LinkNames(t, host.Path))
			cnmtest.AssertNoLeaks(t, host, "eth1")
		})
	}
}

// TestMacvlanBesideBridge runs a macvlan and a bridge network side by side
// on one controller, with a sandbox on both.
func TestMacvlanBesideBridge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	l := newLAN(t, host, false)
	mv := lanNetwork(t, ctrl, "lan", nil)
	br, err := ctrl.NewNetwork(ctx, "bridge", "inside", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.20.0.0/24")}))
	require.NoError(t, err)

	m, epM := container(t, mv, "m")
	b, epB := container(t, br, "b")
	both, err := ctrl.NewSandbox(ctx, "both")
	require.NoError(t, err)
	e1, err := br.CreateEndpoint(ctx, "both-br")
	require.NoError(t, err)
	require.NoError(t, e1.Join(ctx, both))
	e2, err := mv.CreateEndpoint(ctx, "both-mv")
	require.NoError(t, err)
	require.NoError(t, e2.Join(ctx, both))
	assert.Equal(t, "eth1", e2.Info().InterfaceName)
	assert.Equal(t, []string{"eth0/veth", "eth1/macvlan", "lo/device"}, subiftest.LinkNames(t, both.Key()))

	require.NoError(t, cnmtest.TCPExchange(ctx, l.upstream.Path(), m.Key(), netip.AddrPortFrom(router, 80), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, m.Key(), both.Key(), addrPort(epM.Info().IPv4, 80), tcpTimeout), "macvlan to macvlan")
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), both.Key(), addrPort(epB.Info().IPv4, 80), tcpTimeout), "bridge to bridge")
	require.NoError(t, cnmtest.TCPExchange(ctx, l.upstream.Path(), both.Key(), netip.AddrPortFrom(router, 81), tcpTimeout))

	// Leave of the macvlan endpoint deletes its link in the sandbox only
	// (in the background: Settle waits for it).
	require.NoError(t, e2.Leave(ctx, both))
	require.NoError(t, ctrl.Settle(ctx))
	assert.Equal(t, []string{"eth0/veth", "lo/device"}, subiftest.LinkNames(t, both.Key()))
	require.NoError(t, e2.Delete(ctx))

	for _, sb := range []*cnm.Sandbox{m, b, both} {
		require.NoError(t, sb.Delete(ctx))
	}
	require.NoError(t, mv.Delete(ctx))
	require.NoError(t, br.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestMacvlanInternal checks a network without parent: it gets a parent of
// its own, its containers reach each other and nothing else (not even a
// router on the same subnet behind the host's eth1), and its parent goes
// with it.
func TestMacvlanInternal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	l := newLAN(t, host, false)
	before := subiftest.LinkNames(t, host.Path)

	for _, internal := range []bool{false, true} {
		opts := []cnm.NetworkOption{cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet})}
		if internal {
			opts = append(opts, cnm.WithInternal())
		}
		nw, err := ctrl.NewNetwork(ctx, "macvlan", "isolated", opts...)
		require.NoError(t, err)
		after := subiftest.LinkNames(t, host.Path)
		require.Len(t, after, len(before)+1, "one link: the network's own parent")
		own := "mvi-" + nw.ID()[:11]
		assert.Contains(t, after, own+"/bridge")

		a, epA := container(t, nw, "a")
		b, epB := container(t, nw, "b")
		assert.False(t, epA.Info().Gateway.IsValid(), "no way out, no gateway")
		require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 80), tcpTimeout), "neighbours talk")
		require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv4, 80), tcpTimeout))
		err = cnmtest.TCPExchange(ctx, l.upstream.Path(), a.Key(), netip.AddrPortFrom(router, 80), blockedTimeout)
		assert.Error(t, err, "the router on eth1's network is out of reach")

		require.NoError(t, a.Delete(ctx))
		require.NoError(t, b.Delete(ctx))
		require.NoError(t, nw.Delete(ctx))
		assert.Equal(t, before, subiftest.LinkNames(t, host.Path), "the own parent went with the network")
	}
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestMacvlanPassthru checks passthru: one endpoint takes the parent over
// and reaches the router; a second endpoint and a second network on the
// parent are refused, leaving nothing.
func TestMacvlanPassthru(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	l := newLAN(t, host, false)
	nw := lanNetwork(t, ctrl, "pt", map[string]string{"macvlan_mode": "passthru"})
	a, _ := container(t, nw, "a")
	require.NoError(t, cnmtest.TCPExchange(ctx, l.upstream.Path(), a.Key(), netip.AddrPortFrom(router, 80), tcpTimeout))
	eth1, err := host.NS.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	assert.Contains(t, subiftest.LinkNames(t, a.Key()), "eth0/macvlan")

	b, err := ctrl.NewSandbox(ctx, "b")
	require.NoError(t, err)
	epB, err := nw.CreateEndpoint(ctx, "b")
	require.NoError(t, err)
	err = epB.Join(ctx, b)
	require.ErrorIs(t, err, cnm.ErrInUse)
	assert.ErrorContains(t, err, `macvlan_mode=passthru: parent "eth1" already carries endpoint`)
	assert.Equal(t, []string{"lo/device"}, subiftest.LinkNames(t, b.Key()))
	require.NoError(t, epB.Delete(ctx))

	_, err = ctrl.NewNetwork(ctx, "macvlan", "second", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("192.168.51.0/24")}),
		cnm.WithDriverOptions(map[string]string{"parent": "eth1"}))
	require.ErrorIs(t, err, cnm.ErrExists)
	assert.ErrorContains(t, err, `parent="eth1": network `+nw.ID()+` has this parent alone (passthru)`)

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	after, err := host.NS.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	assert.Equal(t, eth1.MAC, after.MAC, "the parent keeps its MAC")
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestMacvlanBadInput checks every refusal through the public API: the
// sentinel, the field and value in the message, and that no link was made
// in the host namespace and no network recorded.
func TestMacvlanBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	newLAN(t, host, false)
	eth1, err := host.NS.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	// A macvlan link on eth1 in the host (a would-be parent that is a slave),
	// and a link that is down.
	require.NoError(t, host.NS.AddMacvlan(ctx, osl.MacvlanSpec{Name: "mvslave", ParentIndex: eth1.Index, Mode: osl.MacvlanBridge}))
	other, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "other"))
	require.NoError(t, err)
	t.Cleanup(func() { other.Delete() })
	require.NoError(t, other.AddVeth(ctx, osl.VethSpec{HostName: "x", PeerName: "eth2", PeerNS: host.NS}))
	// One good network to collide with.
	taken := lanNetwork(t, ctrl, "taken", nil)
	before := subiftest.LinkNames(t, host.Path)

	for _, tc := range []struct {
		name     string
		opts     map[string]string
		subnet   string
		internal bool
		is       error
		mention  string
	}{
		{"parent missing", map[string]string{"parent": "eth9"}, "", false, cnm.ErrNotFound, `parent="eth9": no such link`},
		{"parent is a macvlan slave", map[string]string{"parent": "mvslave"}, "", false, cnm.ErrInvalid, `parent="mvslave": is itself a macvlan link`},
		{"parent down", map[string]string{"parent": "eth2"}, "", false, cnm.ErrInvalid, `parent="eth2": link is down`},
		{"unknown mode", map[string]string{"parent": "eth1", "macvlan_mode": "l2"}, "", false, cnm.ErrInvalid, `macvlan_mode="l2": unknown mode`},
		{"vlan id 0", map[string]string{"parent": "eth1.0"}, "", false, cnm.ErrInvalid, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{"vlan id 4095", map[string]string{"parent": "eth1.4095"}, "", false, cnm.ErrInvalid, `parent="eth1.4095": vlan id 4095 out of range 1-4094`},
		{"vlan base missing", map[string]string{"parent": "eth9.50"}, "", false, cnm.ErrNotFound, `base link "eth9"`},
		{"mtu above parent", map[string]string{"parent": "eth1", "com.docker.network.driver.mtu": "9000"}, "", false, cnm.ErrInvalid,
			`com.docker.network.driver.mtu=9000: above the MTU 1500 of parent "eth1"`},
		{"unknown key", map[string]string{"parent": "eth1", "com.docker.network.bridge.name": "x"}, "", false, cnm.ErrInvalid,
			`unknown macvlan driver option "com.docker.network.bridge.name"`},
		{"internal with parent", map[string]string{"parent": "eth1"}, "", true, cnm.ErrInvalid, `parent="eth1" on an internal network`},
		{"passthru on a used parent", map[string]string{"parent": "eth1", "macvlan_mode": "passthru"}, "", false, cnm.ErrExists,
			`macvlan_mode=passthru: network ` + taken.ID() + ` already uses parent "eth1"`},
		{"overlapping subnet", map[string]string{"parent": "eth1"}, "192.168.50.128/25", false, cnm.ErrExists, "192.168.50.128/25"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subnet := "192.168.60.0/24"
			if tc.subnet != "" {
				subnet = tc.subnet
			}
			opts := []cnm.NetworkOption{cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(subnet)}), cnm.WithDriverOptions(tc.opts)}
			if tc.internal {
				opts = append(opts, cnm.WithInternal())
			}
			_, err := ctrl.NewNetwork(ctx, "macvlan", "bad", opts...)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
			assert.Equal(t, before, subiftest.LinkNames(t, host.Path), "no link left")
			assert.Len(t, ctrl.Networks(), 1, "no network recorded")
		})
	}

	// A join the kernel refuses after the driver made the link (the
	// endpoint's MAC is the parent's: the link cannot come up) leaves
	// nothing in the sandbox, and the endpoint can join again with a good MAC.
	sb, err := ctrl.NewSandbox(ctx, "s")
	require.NoError(t, err)
	ep, err := taken.CreateEndpoint(ctx, "dup-mac", cnm.WithMACAddress(eth1.MAC))
	require.NoError(t, err)
	err = ep.Join(ctx, sb)
	require.Error(t, err)
	assert.Equal(t, []string{"lo/device"}, subiftest.LinkNames(t, sb.Key()), "rollback removed the macvlan link")
	require.NoError(t, ep.Delete(ctx))
	ep, err = taken.CreateEndpoint(ctx, "good", cnm.WithMACAddress(net.HardwareAddr{0x02, 0x42, 0xc0, 0xa8, 0x32, 0x09}))
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	assert.Equal(t, []string{"eth0/macvlan", "lo/device"}, subiftest.LinkNames(t, sb.Key()))

	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, taken.Delete(ctx))
	require.NoError(t, host.NS.DeleteLink(ctx, "mvslave"))
	cnmtest.AssertNoLeaks(t, host, "eth1", "eth2")
}

// TestMacvlanVLANParent checks an 802.1Q parent: made when missing, shared by
// two networks, deleted with the last of them; one the user made is kept.
// On a kernel without 802.1Q it checks the clear error and that nothing is
// left, then skips.
func TestMacvlanVLANParent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	newLAN(t, host, false)
	before := subiftest.LinkNames(t, host.Path)
	nw1, err := ctrl.NewNetwork(ctx, "macvlan", "v50a", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.50.1.0/24")}),
		cnm.WithDriverOptions(map[string]string{"parent": "eth1.50"}))
	if errors.Is(err, cnm.ErrNotSupported) {
		assert.ErrorContains(t, err, `parent="eth1.50": cannot make the 802.1Q sub-interface`)
		assert.Equal(t, before, subiftest.LinkNames(t, host.Path))
		assert.Empty(t, ctrl.Networks())
		t.Skipf("kernel has no 802.1Q (8021q) support: %v", err)
	}
	require.NoError(t, err)
	assert.Contains(t, subiftest.LinkNames(t, host.Path), "eth1.50/vlan")
	nw2, err := ctrl.NewNetwork(ctx, "macvlan", "v50b", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.50.2.0/24")}),
		cnm.WithDriverOptions(map[string]string{"parent": "eth1.50"}))
	require.NoError(t, err)
	require.NoError(t, nw1.Delete(ctx))
	assert.Contains(t, subiftest.LinkNames(t, host.Path), "eth1.50/vlan", "kept for v50b")
	require.NoError(t, nw2.Delete(ctx))
	assert.Equal(t, before, subiftest.LinkNames(t, host.Path), "deleted with the last network")
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestMacvlanRestart checks that a controller restarted on the same host and
// dirs takes macvlan networks back: containers keep talking while no
// controller runs; an internal network's own parent is adopted, or made
// again if it went meanwhile (its containers' links go with it, so their
// endpoints come back unjoined and can join again); and everything can be
// deleted afterwards without leaks.
func TestMacvlanRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	l := newLAN(t, host, false)
	lanNW := lanNetwork(t, ctrl, "lan", nil)
	iso, err := ctrl.NewNetwork(ctx, "macvlan", "iso", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.30.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, lanNW, "a")
	b, epB := container(t, lanNW, "b")
	c, _ := container(t, iso, "c")
	d, epD := container(t, iso, "d")
	own := "mvi-" + iso.ID()[:11]
	ownBefore, err := host.NS.LinkByName(ctx, own)
	require.NoError(t, err)

	reopen := func() *cnm.Controller {
		c, err := cnm.New(host.Options()...)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}

	require.NoError(t, ctrl.Close())
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 9000), tcpTimeout), "no controller: still talking")
	ctrl2 := reopen()
	ownAfter, err := host.NS.LinkByName(ctx, own)
	require.NoError(t, err)
	assert.Equal(t, ownBefore.Index, ownAfter.Index, "the internal parent is adopted, not made again")
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 9001), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, d.Key(), c.Key(), addrPort(epD.Info().IPv4, 9001), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, l.upstream.Path(), a.Key(), netip.AddrPortFrom(router, 80), tcpTimeout))
	lan2, err := ctrl2.NetworkByID(lanNW.ID())
	require.NoError(t, err)
	epA2, err := lan2.EndpointByName("a")
	require.NoError(t, err)
	assert.Equal(t, epA.Info().IPv4, epA2.Info().IPv4)
	assert.Equal(t, "eth0", epA2.Info().InterfaceName)
	a2, err := ctrl2.SandboxByContainerID("a")
	require.NoError(t, err)
	require.NoError(t, epA2.Leave(ctx, a2), "the restored driver knows the joined link")
	require.NoError(t, ctrl2.Settle(ctx))
	assert.Equal(t, []string{"lo/device"}, subiftest.LinkNames(t, a.Key()))

	// The internal parent goes while no controller runs (as after a reboot
	// of the host but not of the sandboxes): it is made again, and c and d,
	// whose links went with it, can join again.
	require.NoError(t, ctrl2.Close())
	require.NoError(t, host.NS.DeleteLink(ctx, own))
	ctrl3 := reopen()
	_, err = host.NS.LinkByName(ctx, own)
	require.NoError(t, err, "made again")
	iso3, err := ctrl3.NetworkByID(iso.ID())
	require.NoError(t, err)
	var isoSandboxes []*cnm.Sandbox
	for _, name := range []string{"c", "d"} {
		ep, err := iso3.EndpointByName(name)
		require.NoError(t, err)
		assert.Equal(t, "", ep.Info().InterfaceName, "its link went with the parent")
		sb, err := ctrl3.SandboxByContainerID(name)
		require.NoError(t, err)
		require.NoError(t, ep.Join(ctx, sb))
		isoSandboxes = append(isoSandboxes, sb)
	}
	require.NoError(t, cnmtest.TCPExchange(ctx, isoSandboxes[1].Key(), isoSandboxes[0].Key(), addrPort(epD.Info().IPv4, 9002), tcpTimeout))

	for _, sb := range ctrl3.Sandboxes() {
		require.NoError(t, sb.Delete(ctx))
	}
	for _, nw := range ctrl3.Networks() {
		for _, ep := range nw.Endpoints() {
			require.NoError(t, ep.Delete(ctx))
		}
		require.NoError(t, nw.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host, "eth1")
}
