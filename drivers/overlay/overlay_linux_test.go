package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// networkNS returns network nid's namespace on h, failing if it has none.
func networkNS(t *testing.T, h *testHost, nid string) *sandbox {
	t.Helper()
	n, err := h.d.network(nid)
	require.NoError(t, err)
	h.d.peerMu.Lock()
	defer h.d.peerMu.Unlock()
	require.NotNil(t, n.sb, "network %s has no namespace on %s", nid, h.ns)
	return n.sb
}

// programmed returns the FDB entries and the neighbour entries of a
// network's vxlan0.
func programmed(t *testing.T, sb *sandbox) ([]fdbRecord, []osl.Neighbour) {
	t.Helper()
	f, err := sb.listFDB(context.Background())
	require.NoError(t, err)
	ns, err := sb.ns.Neighbours(context.Background(), sb.vxlan)
	require.NoError(t, err)
	return f, ns
}

// TestTCPOverVXLAN: two hosts, one overlay network, a sandbox on each;
// after AddPeer on each side TCP flows between the sandboxes over VXLAN,
// RemovePeer stops it, AddPeer brings it back; the MTU is the underlay's
// minus 50; everything goes with leave and delete.
func TestTCPOverVXLAN(t *testing.T) {
	const nid = "0123456789abcdef-net-a"
	lab := newLab(t, 1480, testNet(nid, 4097, "10.10.0.0/24"))
	h1, h2 := lab.h1, lab.h2
	ctx := context.Background()

	// Host 1 hears of host 2's endpoint before it has the network's
	// namespace: the peer is remembered, and programmed at the first Join.
	mac2 := "02:42:0a:0a:00:03"
	early := Peer{NetworkID: nid, IP: netip.MustParseAddr("10.10.0.3"), MAC: mustMAC(mac2), VTEP: h2.vtep}
	require.NoError(t, h1.d.AddPeer(ctx, early))
	_, err := os.Stat(h1.d.sandboxPath(nid))
	assert.True(t, os.IsNotExist(err), "no namespace before the first join")

	ep1 := join(t, h1, nid, "ep1", "10.10.0.2/24", "02:42:0a:0a:00:02")
	ep2 := join(t, h2, nid, "ep2", "10.10.0.3/24", mac2)
	require.NoError(t, h2.d.AddPeer(ctx, ep1.peer()))
	require.NoError(t, h2.d.AddPeer(ctx, ep1.peer()), "AddPeer is idempotent")
	// A peer on this very host is ignored.
	require.NoError(t, h2.d.AddPeer(ctx, ep2.peer()))

	// The kernel objects: MTU, VXLAN settings, FDB and neighbour entries.
	sb1 := networkNS(t, h1, nid)
	for _, ns := range []*osl.Namespace{ep1.sb, ep2.sb} {
		l, err := ns.LinkByName(ctx, "eth0")
		require.NoError(t, err)
		assert.Equal(t, 1480-50, l.MTU, "eth0 MTU in %s", ns)
	}
	vl, err := sb1.ns.LinkByName(ctx, vxlanName)
	require.NoError(t, err)
	require.NotNil(t, vl.VXLAN, "vxlan0 is a %s", vl.Kind)
	vx := *vl.VXLAN
	assert.Equal(t, uint32(4097), vx.VNI)
	assert.Equal(t, uint16(DefaultPort), vx.Port)
	assert.False(t, vx.Learning, "learning")
	assert.True(t, vx.Proxy, "proxy")
	assert.Equal(t, "192.0.2.1", vx.Local.String())
	assert.Equal(t, 1430, vl.MTU)
	assert.Equal(t, sb1.bridge, vl.MasterIndex)
	fdbs, neighs := programmed(t, sb1)
	assert.Equal(t, []fdbRecord{{MAC: mac2, VTEP: h2.vtep}}, fdbs)
	require.Len(t, neighs, 1)
	assert.Equal(t, "10.10.0.3", neighs[0].IP.String())
	assert.Equal(t, mac2, neighs[0].MAC.String())
	links, err := h1.ns.Links(ctx)
	require.NoError(t, err)
	assert.Len(t, links, 2, "the driver makes nothing in the host namespace")

	// TCP both ways over the overlay.
	serve(t, ep2.sb, 8080, "ep2")
	serve(t, ep1.sb, 8080, "ep1")
	got, err := ask(ep1.sb, netip.MustParseAddrPort("10.10.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)
	got, err = ask(ep2.sb, netip.MustParseAddrPort("10.10.0.2:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep1", got)

	// RemovePeer removes both entries and stops the traffic.
	require.NoError(t, h1.d.RemovePeer(ctx, ep2.peer()))
	require.NoError(t, h1.d.RemovePeer(ctx, ep2.peer()), "RemovePeer is idempotent")
	fdbs, neighs = programmed(t, sb1)
	assert.Empty(t, fdbs)
	assert.Empty(t, neighs)
	_, err = ask(ep1.sb, netip.MustParseAddrPort("10.10.0.3:8080"), 500*time.Millisecond)
	assert.Error(t, err, "no peer, no path")

	// Back again.
	require.NoError(t, h1.d.AddPeer(ctx, ep2.peer()))
	got, err = ask(ep1.sb, netip.MustParseAddrPort("10.10.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)

	// A second endpoint on host 1 keeps the namespace when the first leaves.
	ep3 := join(t, h1, nid, "ep3", "10.10.0.4/24", "02:42:0a:0a:00:04")
	require.NoError(t, h2.d.AddPeer(ctx, ep3.peer()))
	serve(t, ep3.sb, 8080, "ep3")
	got, err = ask(ep2.sb, netip.MustParseAddrPort("10.10.0.4:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep3", got)
	ep1.leave(t)
	_, err = os.Stat(h1.d.sandboxPath(nid))
	require.NoError(t, err, "the namespace stays while ep3 is joined")
	got, err = ask(ep3.sb, netip.MustParseAddrPort("10.10.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)

	lab.finish(t, ep3, ep2)
	// The peer table outlives the network: the control plane owns it.
	assert.Len(t, h1.d.knownPeers(nid), 1)
}

// TestOverlappingSubnets: two overlay networks with the same subnet and the
// same addresses on the same two hosts stay apart.
func TestOverlappingSubnets(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	nets := map[string]uint32{"aaaaaaaaaaaaaaaa": 4097, "bbbbbbbbbbbbbbbb": 4098}
	eps := map[string][2]*testEP{}
	for nid, vni := range nets {
		for _, h := range []*testHost{h1, h2} {
			require.NoError(t, h.d.CreateNetwork(ctx, testNet(nid, vni, "10.20.0.0/24")))
		}
		m := nid[:1]
		e1 := join(t, h1, nid, nid+"-1", "10.20.0.2/24", "02:00:00:00:0"+m+":02")
		e2 := join(t, h2, nid, nid+"-2", "10.20.0.3/24", "02:00:00:00:0"+m+":03")
		require.NoError(t, h1.d.AddPeer(ctx, e2.peer()))
		require.NoError(t, h2.d.AddPeer(ctx, e1.peer()))
		serve(t, e2.sb, 8080, m+"2")
		serve(t, e1.sb, 8080, m+"1")
		eps[nid] = [2]*testEP{e1, e2}
	}
	for nid, e := range eps {
		m := nid[:1]
		got, err := ask(e[0].sb, netip.MustParseAddrPort("10.20.0.3:8080"), 3*time.Second)
		require.NoError(t, err)
		assert.Equal(t, m+"2", got, "network %s reaches its own 10.20.0.3", nid)
		got, err = ask(e[1].sb, netip.MustParseAddrPort("10.20.0.2:8080"), 3*time.Second)
		require.NoError(t, err)
		assert.Equal(t, m+"1", got)
	}
	// Network b's peer gone on host 1: b is cut, a still flows.
	b := eps["bbbbbbbbbbbbbbbb"]
	require.NoError(t, h1.d.RemovePeer(ctx, b[1].peer()))
	_, err := ask(b[0].sb, netip.MustParseAddrPort("10.20.0.3:8080"), 500*time.Millisecond)
	assert.Error(t, err)
	got, err := ask(eps["aaaaaaaaaaaaaaaa"][0].sb, netip.MustParseAddrPort("10.20.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "a2", got)

	for nid, e := range eps {
		e[0].leave(t)
		e[1].leave(t)
		for _, h := range []*testHost{h1, h2} {
			require.NoError(t, h.d.DeleteNetwork(ctx, nid))
		}
	}
	assertClean(t, h1)
	assertClean(t, h2)
}

// TestJoinRollback fails a Join at each step of making the network's
// namespace and the endpoint's veth, and checks that nothing is left; then
// the same Join succeeds. Real kernel refusals too: an interface name taken
// in the sandbox, and a VNI another driver holds in the same host namespace.
func TestJoinRollback(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "cccccccccccccccc"
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4099, "10.30.0.0/24")))
	require.NoError(t, h1.d.AddPeer(ctx, Peer{NetworkID: nid, IP: netip.MustParseAddr("10.30.0.9"), MAC: mustMAC("02:00:00:00:00:09"), VTEP: h2.vtep}))
	sb, err := osl.NewNamespace(ctx, t.TempDir()+"/sb")
	require.NoError(t, err)
	defer sb.Delete()
	require.NoError(t, h1.d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: nid, EndpointID: "e"}))
	req := driverapi.JoinRequest{NetworkID: nid, EndpointID: "e", Sandbox: sb, InterfaceName: "eth0", MAC: mustMAC("02:00:00:00:00:02")}
	for _, step := range []string{"namespace", "bridge", "vxlan", "peers", "veth"} {
		h1.d.fault = func(s string) error {
			if s == step {
				return assert.AnError
			}
			return nil
		}
		_, err := h1.d.Join(ctx, req)
		require.ErrorIs(t, err, assert.AnError, step)
		assertClean(t, h1)
		assert.Equal(t, []string{"lo"}, sandboxLinks(t, sb), step)
	}
	h1.d.fault = nil

	// eth0 taken in the sandbox: the kernel refuses the veth.
	require.NoError(t, sb.AddVeth(ctx, osl.VethSpec{HostName: "eth0", PeerName: "other", PeerNS: sb}))
	_, err = h1.d.Join(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrExists)
	assertClean(t, h1)
	require.NoError(t, sb.DeleteLink(ctx, "eth0"))

	// A second driver in the same host namespace holds VNI 4099.
	other, err := New(Config{HostNS: h1.ns, AdvertiseAddress: h1.vtep, RunDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, other.CreateNetwork(ctx, testNet("dddddddddddddddd", 4099, "10.31.0.0/24")))
	osb, err := osl.NewNamespace(ctx, t.TempDir()+"/osb")
	require.NoError(t, err)
	defer osb.Delete()
	require.NoError(t, other.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "dddddddddddddddd", EndpointID: "o"}))
	_, err = other.Join(ctx, driverapi.JoinRequest{NetworkID: "dddddddddddddddd", EndpointID: "o", Sandbox: osb, InterfaceName: "eth0"})
	require.NoError(t, err)
	_, err = h1.d.Join(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.Contains(t, err.Error(), "VNI 4099")
	assertClean(t, h1)
	assert.Equal(t, []string{"lo"}, sandboxLinks(t, sb))
	require.NoError(t, other.Leave(ctx, driverapi.LeaveRequest{NetworkID: "dddddddddddddddd", EndpointID: "o", Sandbox: osb}))

	// Now it works, with the remembered peer programmed.
	_, err = h1.d.Join(ctx, req)
	require.NoError(t, err)
	fdbs, neighs := programmed(t, networkNS(t, h1, nid))
	assert.Len(t, fdbs, 1)
	assert.Len(t, neighs, 1)
	require.ErrorIs(t, h1.d.DeleteEndpoint(ctx, nid, "e"), driverapi.ErrInUse)
	require.ErrorIs(t, h1.d.DeleteNetwork(ctx, nid), driverapi.ErrInUse)
	require.NoError(t, h1.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: nid, EndpointID: "e", Sandbox: sb}))
	require.NoError(t, h1.d.DeleteEndpoint(ctx, nid, "e"))
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	require.NoError(t, other.DeleteEndpoint(ctx, "dddddddddddddddd", "o"))
	require.NoError(t, other.DeleteNetwork(ctx, "dddddddddddddddd"))
	assertClean(t, h1)
}

// TestCreateNetworkRefusals: refusals that need the host namespace: an
// advertise address no link has, an underlay too small for VXLAN, a VNI
// taken, a gateway outside its subnet.
func TestCreateNetworkRefusals(t *testing.T) {
	h1, _ := newHosts(t, 100)
	ctx := context.Background()
	err := h1.d.CreateNetwork(ctx, testNet("n1", 4097, "10.0.0.0/24"))
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Contains(t, err.Error(), "MTU (underlay MTU 100 - 50)=50")

	d, err := New(Config{HostNS: h1.ns, AdvertiseAddress: netip.MustParseAddr("192.0.2.77"), RunDir: h1.runDir})
	require.NoError(t, err)
	err = d.CreateNetwork(ctx, testNet("n1", 4097, "10.0.0.0/24"))
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Contains(t, err.Error(), "AdvertiseAddress=192.0.2.77")

	// With an explicit MTU the underlay is not consulted.
	req := testNet("n1", 4097, "10.0.0.0/24")
	req.Options[OptionMTU] = "1400"
	require.NoError(t, h1.d.CreateNetwork(ctx, req))
	err = h1.d.CreateNetwork(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrExists)
	req2 := testNet("n2", 4097, "10.0.0.0/24")
	req2.Options[OptionMTU] = "1400"
	err = h1.d.CreateNetwork(ctx, req2)
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.Contains(t, err.Error(), "4097")
	req3 := testNet("n3", 4098, "10.0.0.0/24")
	req3.Options[OptionMTU] = "1400"
	req3.IPv4.Gateway = netip.MustParsePrefix("10.9.0.1/24")
	err = h1.d.CreateNetwork(ctx, req3)
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Contains(t, err.Error(), "10.9.0.1/24")
	require.NoError(t, h1.d.DeleteNetwork(ctx, "n1"))
	assertClean(t, h1)
}

// TestConcurrentJoinsAndPeers: joins, leaves and peer changes of two
// networks run at once; afterwards each network's namespace holds exactly
// the peers of the table, and everything goes.
func TestConcurrentJoinsAndPeers(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	nets := []string{"ffffffffffffffff", "9999999999999999"}
	for i, nid := range nets {
		require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, uint32(5000+i), "10.50.0.0/24")))
	}
	const perNet = 6
	var eps []*testEP
	results := make(chan *testEP)
	errs := make(chan error, 1000)
	for i, nid := range nets {
		for j := range perNet {
			go func() {
				ep, err := joinE(t, h1, nid, fmt.Sprintf("e%d-%d", i, j), fmt.Sprintf("10.50.0.%d/24", 10+j), fmt.Sprintf("02:00:00:00:%02x:%02x", i, 10+j))
				errs <- err
				results <- ep
			}()
			go func() {
				p := Peer{NetworkID: nid, IP: netip.AddrFrom4([4]byte{10, 50, 0, byte(100 + j)}), MAC: net.HardwareAddr{2, 1, 0, 0, byte(i), byte(j)}, VTEP: h2.vtep}
				errs <- h1.d.AddPeer(ctx, p)
				if j%2 == 1 {
					errs <- h1.d.RemovePeer(ctx, p)
				}
			}()
		}
	}
	for range len(nets) * perNet {
		if ep := <-results; ep != nil {
			eps = append(eps, ep)
		}
	}
	for range len(nets) * (2*perNet + perNet/2) {
		require.NoError(t, <-errs)
	}
	for _, nid := range nets {
		sb := networkNS(t, h1, nid)
		fdbs, neighs := programmed(t, sb)
		assert.Len(t, fdbs, perNet/2, nid)
		assert.Len(t, neighs, perNet/2, nid)
		assert.Len(t, h1.d.knownPeers(nid), perNet/2, nid)
	}
	for _, ep := range eps {
		go func() { errs <- ep.leaveE() }()
	}
	for range eps {
		require.NoError(t, <-errs)
	}
	for _, nid := range nets {
		require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	}
	assertClean(t, h1)
}

// TestLeaveSandboxGoneAndPeerReplace: a sandbox dropped before Leave (the
// controller's SandboxGone) leaves nothing after Leave; a peer added again
// with a new MAC and VTEP replaces the old one, FDB entry included.
func TestLeaveSandboxGoneAndPeerReplace(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "1111111111111111"
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4100, "10.60.0.0/24")))
	ep := join(t, h1, nid, "e", "10.60.0.2/24", "02:00:00:00:60:02")

	p := Peer{NetworkID: nid, IP: netip.MustParseAddr("10.60.0.3"), MAC: mustMAC("02:00:00:00:60:03"), VTEP: h2.vtep}
	require.NoError(t, h1.d.AddPeer(ctx, p))
	// Two addresses of one endpoint share its FDB entry.
	p6 := p
	p6.IP = netip.MustParseAddr("10.60.0.33")
	require.NoError(t, h1.d.AddPeer(ctx, p6))
	fdbs, neighs := programmed(t, networkNS(t, h1, nid))
	assert.Len(t, fdbs, 1)
	assert.Len(t, neighs, 2)
	require.NoError(t, h1.d.RemovePeer(ctx, p6))
	fdbs, neighs = programmed(t, networkNS(t, h1, nid))
	assert.Len(t, fdbs, 1, "still used by 10.60.0.3")
	assert.Len(t, neighs, 1)

	moved := p
	moved.MAC = mustMAC("02:00:00:00:60:99")
	moved.VTEP = netip.MustParseAddr("192.0.2.50")
	require.NoError(t, h1.d.AddPeer(ctx, moved))
	fdbs, neighs = programmed(t, networkNS(t, h1, nid))
	assert.Equal(t, []fdbRecord{{MAC: "02:00:00:00:60:99", VTEP: moved.VTEP}}, fdbs)
	require.Len(t, neighs, 1)
	assert.Equal(t, "02:00:00:00:60:99", neighs[0].MAC.String())
	// The old peer's removal is stale: the new one stays.
	require.NoError(t, h1.d.RemovePeer(ctx, p))
	assert.Len(t, h1.d.knownPeers(nid), 1)

	require.NoError(t, ep.sb.Delete())
	require.NoError(t, h1.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: nid, EndpointID: "e", SandboxGone: true}))
	require.NoError(t, h1.d.DeleteEndpoint(ctx, nid, "e"))
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	assertClean(t, h1)
}

// TestLeaveTwiceAtOnce: two Leaves of one endpoint at the same time (a
// runtime's and the controller's background retry) count it out once:
// the network's namespace stays for the other joined endpoint.
func TestLeaveTwiceAtOnce(t *testing.T) {
	h1, _ := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "1eafe1eafe1eafe1"
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4110, "10.61.0.0/24")))
	a := join(t, h1, nid, "a", "10.61.0.2/24", "02:00:00:00:61:02")
	b := join(t, h1, nid, "b", "10.61.0.3/24", "02:00:00:00:61:03")
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			errs <- h1.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: nid, EndpointID: a.id, Sandbox: a.sb})
		}()
	}
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	_, err := os.Stat(h1.d.sandboxPath(nid))
	require.NoError(t, err, "b is still joined: the network's namespace stays")
	require.NoError(t, h1.d.DeleteEndpoint(ctx, nid, a.id))
	require.NoError(t, a.sb.Delete())
	b.leave(t)
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	assertClean(t, h1)
}
