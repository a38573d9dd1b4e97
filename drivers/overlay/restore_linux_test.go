package overlay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// restart is what a controller's restart does to h's driver: the process
// exits (its sockets and files close, nothing is deleted) and a new one
// makes a new Driver with the same Config.
func restart(t *testing.T, h *testHost) {
	t.Helper()
	old := h.d
	for _, n := range old.snapshot() {
		n.mu.Lock()
		if n.sb != nil {
			n.sb.close()
		}
		n.mu.Unlock()
	}
	d, err := New(old.cfg)
	require.NoError(t, err)
	h.d = d
}

// restoreEP restores ep on its host's driver, joined or not.
func restoreEP(ep *testEP, joined bool) error {
	req := driverapi.RestoreEndpointRequest{NetworkID: ep.nid, EndpointID: ep.id, MAC: ep.mac, IPv4: ep.ip}
	if joined {
		req.Sandbox, req.InterfaceName = ep.sb, "eth0"
	}
	return ep.h.d.RestoreEndpoint(context.Background(), req)
}

// rejoin joins ep, recorded and not joined, to its sandbox again and
// configures eth0 as the controller would.
func rejoin(t *testing.T, ep *testEP) {
	t.Helper()
	ctx := context.Background()
	resp, err := ep.h.d.Join(ctx, driverapi.JoinRequest{NetworkID: ep.nid, EndpointID: ep.id, Sandbox: ep.sb, InterfaceName: "eth0", MAC: ep.mac, IPv4: ep.ip})
	require.NoError(t, err)
	assert.Equal(t, driverapi.JoinResponse{}, resp, "no gateway, no route, no link to move")
	l, err := ep.sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	require.NoError(t, ep.sb.AddAddress(ctx, l.Index, ep.ip))
	require.NoError(t, ep.sb.LinkUp(ctx, l.Index, false))
}

// echo listens on port inside ns and echoes every connection.
func echo(t *testing.T, ns *osl.Namespace, port int) {
	t.Helper()
	serveConns(t, ns, port, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// dialEcho opens a TCP connection from ns to to.
func dialEcho(t *testing.T, ns *osl.Namespace, to string) net.Conn {
	t.Helper()
	var c net.Conn
	require.NoError(t, ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", to, 3*time.Second)
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg on c and checks it comes back within 5s.
func roundTrip(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, sent %q", buf, msg)
	}
	return nil
}

// ports returns the names of the veth ports of a network's br0.
func ports(t *testing.T, sb *sandbox) []string {
	t.Helper()
	links, err := sb.ns.Links(context.Background())
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		if l.Kind == "veth" && l.MasterIndex == sb.bridge {
			out = append(out, l.Name)
		}
	}
	slices.Sort(out)
	return out
}

// gone waits for ns to have no link but lo (a dropped namespace's veths go
// with it, asynchronously).
func gone(t *testing.T, ns *osl.Namespace) {
	t.Helper()
	assert.Eventually(t, func() bool { return slices.Equal(sandboxLinks(t, ns), []string{"lo"}) }, 5*time.Second, 10*time.Millisecond, "links left in %s", ns)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestRestoreKeepsTraffic: a host's controller restarts while two
// endpoints talk over the overlay. The new driver takes the network and
// the joined endpoint back (a peer arriving before the network is
// restored), and FinishRestore drops what a crash or a network deleted
// while down left (a namespace with its VXLAN device, whose VNI is free at
// once; a namespace file never mounted; a port of br0 that no endpoint
// owns, with its peer in a sandbox), and nothing else. The established TCP
// connection echoes throughout; br0 and vxlan0 are the same devices; new
// joins, peers added afterwards, and leaves work; everything goes at the
// end.
func TestRestoreKeepsTraffic(t *testing.T) {
	const nid = "a1b2c3d4e5f6-restore"
	lab := newLab(t, 1500, testNet(nid, 4200, "10.80.0.0/24"))
	h1, h2 := lab.h1, lab.h2
	ctx := context.Background()
	ep1, ep2 := lab.pair(t, epSpec{"ep1", "10.80.0.2/24", "02:00:00:00:80:02"}, epSpec{"ep2", "10.80.0.3/24", "02:00:00:00:80:03"})
	echo(t, ep2.sb, 7000)
	serve(t, ep2.sb, 8080, "ep2")
	conn := dialEcho(t, ep1.sb, "10.80.0.3:7000")
	require.NoError(t, roundTrip(conn, "before"))
	sb := networkNS(t, h1, nid)
	bridge, vxlan := sb.bridge, sb.vxlan

	// What crashes and a network deleted while the controller was down
	// leave behind.
	stalePath := filepath.Join(h1.runDir, "ov-5ta1e0000000")
	stale, err := osl.NewNamespace(ctx, stalePath)
	require.NoError(t, err)
	staleBr, err := stale.AddBridge(ctx, osl.BridgeSpec{Name: bridgeName})
	require.NoError(t, err)
	_, err = addVXLAN(ctx, h1.ns, stale, vxlanSpec{name: vxlanName, vni: 4299, local: h1.vtep, port: DefaultPort, mtu: 1450, master: staleBr})
	require.NoError(t, err)
	require.NoError(t, stale.Close())
	halfPath := filepath.Join(h1.runDir, "ov-halfmade0000")
	require.NoError(t, os.WriteFile(halfPath, nil, 0o444))
	otherPath := filepath.Join(h1.runDir, "not-ours")
	require.NoError(t, os.WriteFile(otherPath, nil, 0o644))
	scratch, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "scratch"))
	require.NoError(t, err)
	defer scratch.Delete()
	require.NoError(t, sb.ns.AddVeth(ctx, osl.VethSpec{HostName: "vethstale0", PeerName: "eth0", PeerNS: scratch, MasterIndex: sb.bridge}))

	restart(t, h1)
	require.NoError(t, h1.d.AddPeer(ctx, ep2.peer()), "a peer before its network is restored")
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(nid, 4200, "10.80.0.0/24")))
	require.NoError(t, restoreEP(ep1, true))
	require.NoError(t, roundTrip(conn, "during"))
	require.NoError(t, h1.d.FinishRestore(ctx))

	require.NoError(t, roundTrip(conn, "after"), "the established connection carries on")
	got, err := ask(ep1.sb, netip.MustParseAddrPort("10.80.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)
	sb = networkNS(t, h1, nid)
	assert.Equal(t, bridge, sb.bridge, "br0 kept")
	assert.Equal(t, vxlan, sb.vxlan, "vxlan0 kept")
	fdbs, neighs := programmed(t, sb)
	assert.Equal(t, []fdbRecord{{MAC: "02:00:00:00:80:03", VTEP: h2.vtep}}, fdbs)
	assert.Len(t, neighs, 1)

	assert.False(t, exists(stalePath), "stale namespace dropped")
	assert.False(t, exists(halfPath), "half-made namespace file removed")
	assert.True(t, exists(otherPath), "a file not named like the driver's is left alone")
	require.NoError(t, os.Remove(otherPath))
	assert.Len(t, ports(t, sb), 1, "the stale port is deleted, ep1's kept")
	assert.Equal(t, []string{"lo"}, sandboxLinks(t, scratch), "the stale port's peer went with it")
	// The stale vxlan0 was deleted before its namespace was dropped: its
	// VNI is free at once.
	probe, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "probe"))
	require.NoError(t, err)
	probeBr, err := probe.AddBridge(ctx, osl.BridgeSpec{Name: bridgeName})
	require.NoError(t, err)
	idx, err := addVXLAN(ctx, h1.ns, probe, vxlanSpec{name: vxlanName, vni: 4299, local: h1.vtep, port: DefaultPort, mtu: 1450, master: probeBr})
	require.NoError(t, err, "VNI 4299 is free")
	require.NoError(t, (&sandbox{ns: probe, vxlan: idx}).destroy(ctx))

	// New joins, and peers added after FinishRestore.
	ep3 := join(t, h1, nid, "ep3", "10.80.0.4/24", "02:00:00:00:80:04")
	ep4 := join(t, h2, nid, "ep4", "10.80.0.5/24", "02:00:00:00:80:05")
	require.NoError(t, h2.d.AddPeer(ctx, ep3.peer()))
	require.NoError(t, h1.d.AddPeer(ctx, ep4.peer()))
	serve(t, ep4.sb, 8080, "ep4")
	for _, from := range []*testEP{ep1, ep3} {
		got, err := ask(from.sb, netip.MustParseAddrPort("10.80.0.5:8080"), 3*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "ep4", got)
	}
	require.NoError(t, roundTrip(conn, "still"))

	conn.Close()
	ep1.leave(t)
	assert.True(t, exists(h1.d.sandboxPath(nid)), "ep3 keeps the namespace")
	ep3.leave(t)
	assert.False(t, exists(h1.d.sandboxPath(nid)), "the last leave drops it")
	lab.finish(t, ep2, ep4)
}

// TestRestoreDropsUnexplained: an endpoint restored as not joined loses
// its veth (and can join again); a network none of whose endpoints is
// restored as joined, and a network not restored at all, lose their
// namespaces, with the sandboxes' interfaces, and their VNIs are free for
// a new join at once. Until FinishRestore, a join that needs a new
// namespace where an old one is refused with ErrExists.
func TestRestoreDropsUnexplained(t *testing.T) {
	const netA, netB = "aaaa1111aaaa-a", "bbbb2222bbbb-b"
	lab := newLab(t, 1500, testNet(netA, 4210, "10.81.0.0/24"))
	h1, h2 := lab.h1, lab.h2
	ctx := context.Background()
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(netB, 4211, "10.82.0.0/24")))
	a1, p := lab.pair(t, epSpec{"a1", "10.81.0.2/24", "02:00:00:00:81:02"}, epSpec{"p", "10.81.0.9/24", "02:00:00:00:81:09"})
	a2 := join(t, h1, netA, "a2", "10.81.0.3/24", "02:00:00:00:81:03")
	b1 := join(t, h1, netB, "b1", "10.82.0.2/24", "02:00:00:00:82:02")
	require.NoError(t, h2.d.AddPeer(ctx, a2.peer()))
	serve(t, p.sb, 8080, "p")

	// a2's leave was interrupted by the crash: the controller restores it
	// as not joined.
	restart(t, h1)
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(netA, 4210, "10.81.0.0/24")))
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(netB, 4211, "10.82.0.0/24")))
	require.NoError(t, restoreEP(a1, true))
	require.NoError(t, restoreEP(a2, false))
	require.NoError(t, restoreEP(b1, true))
	require.NoError(t, h1.d.FinishRestore(ctx))
	assert.Equal(t, []string{"lo"}, sandboxLinks(t, a2.sb), "a2's veth is deleted")
	assert.Len(t, ports(t, networkNS(t, h1, netA)), 1)
	got, err := ask(a1.sb, netip.MustParseAddrPort("10.81.0.9:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "p", got)
	rejoin(t, a2)
	got, err = ask(a2.sb, netip.MustParseAddrPort("10.81.0.9:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "p", got)

	// Next restart: nothing of A is joined any more, and B was deleted
	// while the controller was down.
	restart(t, h1)
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(netA, 4210, "10.81.0.0/24")))
	require.NoError(t, restoreEP(a1, false))
	require.NoError(t, restoreEP(a2, false))
	// Before FinishRestore the old namespace is in the way of a new one.
	_, err = h1.d.Join(ctx, driverapi.JoinRequest{NetworkID: netA, EndpointID: "a1", Sandbox: a1.sb, InterfaceName: "eth5"})
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.Contains(t, sandboxLinks(t, a1.sb), "eth0", "the failed join dropped nothing")
	assert.NotContains(t, sandboxLinks(t, a1.sb), "eth5")
	require.NoError(t, h1.d.FinishRestore(ctx))
	assert.False(t, exists(h1.d.sandboxPath(netA)))
	assert.False(t, exists(h1.d.sandboxPath(netB)))
	assert.False(t, h1.d.hasNetwork(netB))
	// VNI 4211 is free at once: vxlan0 went before the namespace.
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(netB, 4211, "10.82.0.0/24")))
	b9 := join(t, h1, netB, "b9", "10.82.0.9/24", "02:00:00:00:82:09")
	b9.leave(t)
	require.NoError(t, h1.d.DeleteNetwork(ctx, netB))
	for _, ep := range []*testEP{a1, a2, b1} {
		gone(t, ep.sb)
	}
	assertClean(t, h1)

	for _, ep := range []*testEP{a1, a2} {
		require.NoError(t, h1.d.DeleteEndpoint(ctx, netA, ep.id))
	}
	require.NoError(t, h1.d.DeleteNetwork(ctx, netA))
	p.leave(t)
	require.NoError(t, h2.d.DeleteNetwork(ctx, netA))
	assertClean(t, h1)
	assertClean(t, h2)
}

// TestRestoreEndpointRefusals: a joined endpoint that cannot be taken back
// (its interface missing or not the network's, bad input, a fault while
// the namespace is adopted) is refused with a checkable error; nothing is
// recorded, the namespace is neither taken nor dropped, and the traffic of
// the endpoint carries on; then the right request succeeds, once.
func TestRestoreEndpointRefusals(t *testing.T) {
	const nid = "c0ffee00c0ffee"
	lab := newLab(t, 1500, testNet(nid, 4220, "10.83.0.0/24"))
	h1 := lab.h1
	ctx := context.Background()
	e1, p := lab.pair(t, epSpec{"e1", "10.83.0.2/24", "02:00:00:00:83:02"}, epSpec{"p", "10.83.0.9/24", "02:00:00:00:83:09"})
	echo(t, p.sb, 7000)
	conn := dialEcho(t, e1.sb, "10.83.0.9:7000")
	require.NoError(t, roundTrip(conn, "before"))
	// A veth pair inside the sandbox: its peer index names a link of the
	// sandbox, not of the network's namespace.
	require.NoError(t, e1.sb.AddVeth(ctx, osl.VethSpec{HostName: "x0", PeerName: "x1", PeerNS: e1.sb}))

	restart(t, h1)
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(nid, 4220, "10.83.0.0/24")))
	base := driverapi.RestoreEndpointRequest{NetworkID: nid, EndpointID: "e1", MAC: e1.mac, IPv4: e1.ip, Sandbox: e1.sb, InterfaceName: "eth0"}
	for _, tc := range []struct {
		name   string
		change func(*driverapi.RestoreEndpointRequest)
		fault  string
		want   error
		says   string
	}{
		{"no such interface", func(r *driverapi.RestoreEndpointRequest) { r.InterfaceName = "eth7" }, "", driverapi.ErrNotFound, "eth7"},
		{"not a veth", func(r *driverapi.RestoreEndpointRequest) { r.InterfaceName = "lo" }, "", driverapi.ErrNotFound, "not one end of a veth pair"},
		{"another veth", func(r *driverapi.RestoreEndpointRequest) { r.InterfaceName = "x0" }, "", driverapi.ErrNotFound, "not in the network's namespace"},
		{"bad name", func(r *driverapi.RestoreEndpointRequest) { r.InterfaceName = "a/b" }, "", driverapi.ErrInvalid, `"a/b"`},
		{"no endpoint ID", func(r *driverapi.RestoreEndpointRequest) { r.EndpointID = "" }, "", driverapi.ErrInvalid, "EndpointID"},
		{"unknown network", func(r *driverapi.RestoreEndpointRequest) { r.NetworkID = "nope" }, "", driverapi.ErrNotFound, `"nope"`},
		{"fault at vxlan", nil, "adopt vxlan", assert.AnError, ""},
		{"fault at peers", nil, "adopt peers", assert.AnError, ""},
	} {
		req := base
		if tc.change != nil {
			tc.change(&req)
		}
		h1.d.fault = func(s string) error {
			if s == tc.fault {
				return assert.AnError
			}
			return nil
		}
		err := h1.d.RestoreEndpoint(ctx, req)
		h1.d.fault = nil
		require.ErrorIs(t, err, tc.want, tc.name)
		assert.Contains(t, err.Error(), tc.says, tc.name)
		n, err := h1.d.network(nid)
		require.NoError(t, err)
		assert.Empty(t, n.endpoints, tc.name)
		assert.Nil(t, n.sb, tc.name)
		assert.True(t, exists(h1.d.sandboxPath(nid)), "%s: the namespace stays", tc.name)
		require.NoError(t, roundTrip(conn, tc.name))
	}

	require.NoError(t, restoreEP(e1, true))
	require.ErrorIs(t, restoreEP(e1, true), driverapi.ErrExists)
	twin := base
	twin.EndpointID = "e1-twin"
	err := h1.d.RestoreEndpoint(ctx, twin)
	require.ErrorIs(t, err, driverapi.ErrExists, "one interface, two endpoints")
	assert.Contains(t, err.Error(), "e1")
	require.NoError(t, h1.d.FinishRestore(ctx))
	require.NoError(t, roundTrip(conn, "after"))
	require.ErrorIs(t, h1.d.DeleteEndpoint(ctx, nid, "e1"), driverapi.ErrInUse, "restored as joined")

	conn.Close()
	require.NoError(t, e1.sb.DeleteLink(ctx, "x0"))
	lab.finish(t, e1, p)
}

// TestRestoreRepairs: what was removed or changed by hand in the network's
// namespace while the controller was down is put back when it is taken
// back (vxlan0 deleted, the endpoint's port taken off br0 and down, br0's
// gateway address deleted and br0 down), the rest kept; the traffic flows
// again and the established connection carries on.
func TestRestoreRepairs(t *testing.T) {
	const nid = "d00dd00dd00d"
	lab := newLab(t, 1500, testNet(nid, 4230, "10.84.0.0/24"))
	h1 := lab.h1
	ctx := context.Background()
	e1, p := lab.pair(t, epSpec{"e1", "10.84.0.2/24", "02:00:00:00:84:02"}, epSpec{"p", "10.84.0.9/24", "02:00:00:00:84:09"})
	echo(t, p.sb, 7000)
	serve(t, p.sb, 8080, "p")
	conn := dialEcho(t, e1.sb, "10.84.0.9:7000")
	require.NoError(t, roundTrip(conn, "before"))

	sb := networkNS(t, h1, nid)
	port := ports(t, sb)[0]
	pl, err := sb.ns.LinkByName(ctx, port)
	require.NoError(t, err)
	bridge := sb.bridge
	restart(t, h1)
	ns, err := osl.OpenNamespace(ctx, h1.d.sandboxPath(nid))
	require.NoError(t, err)
	require.NoError(t, ns.DeleteLink(ctx, vxlanName))
	require.NoError(t, ns.SetLinkMaster(ctx, pl.Index, 0))
	require.NoError(t, ns.SetLinkDown(ctx, pl.Index))
	require.NoError(t, ns.DeleteAddress(ctx, bridge, netip.MustParsePrefix("10.84.0.1/24")))
	require.NoError(t, ns.SetLinkDown(ctx, bridge))
	require.NoError(t, ns.Close())

	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(nid, 4230, "10.84.0.0/24")))
	require.NoError(t, h1.d.AddPeer(ctx, p.peer()))
	require.NoError(t, restoreEP(e1, true))
	require.NoError(t, h1.d.FinishRestore(ctx))

	sb = networkNS(t, h1, nid)
	assert.Equal(t, bridge, sb.bridge)
	assert.Equal(t, []string{port}, ports(t, sb), "the port is back on br0")
	for _, idx := range []int{bridge, pl.Index, sb.vxlan} {
		l, err := sb.ns.LinkByIndex(ctx, idx)
		require.NoError(t, err)
		assert.True(t, l.Up, "%s is up", l.Name)
	}
	addrs, err := sb.ns.Addresses(ctx, bridge)
	require.NoError(t, err)
	assert.Contains(t, addrs, netip.MustParsePrefix("10.84.0.1/24"))
	fdbs, neighs := programmed(t, sb)
	assert.Len(t, fdbs, 1)
	assert.Len(t, neighs, 1)
	got, err := ask(e1.sb, netip.MustParseAddrPort("10.84.0.9:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "p", got)
	require.NoError(t, roundTrip(conn, "after"))

	conn.Close()
	lab.finish(t, e1, p)
}

// TestRestoreNamespaceGone: the network's namespace file was removed by
// hand while something else kept the namespace, and so the endpoint's
// interface, alive. RestoreEndpoint cannot reconnect the interface and
// says so with ErrNotFound; the controller restores the endpoint as not
// joined, and once the namespace is gone with the interface, a new join
// works.
func TestRestoreNamespaceGone(t *testing.T) {
	const nid = "beefbeefbeef"
	lab := newLab(t, 1500, testNet(nid, 4240, "10.85.0.0/24"))
	h1 := lab.h1
	ctx := context.Background()
	e1, p := lab.pair(t, epSpec{"e1", "10.85.0.2/24", "02:00:00:00:85:02"}, epSpec{"p", "10.85.0.9/24", "02:00:00:00:85:09"})
	serve(t, p.sb, 8080, "p")

	path := h1.d.sandboxPath(nid)
	held, err := osl.OpenNamespace(ctx, path)
	require.NoError(t, err)
	defer held.Close()
	require.NoError(t, osl.RemoveNamespaceFile(path))

	restart(t, h1)
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(nid, 4240, "10.85.0.0/24")))
	require.NoError(t, h1.d.AddPeer(ctx, p.peer()))
	err = restoreEP(e1, true)
	require.ErrorIs(t, err, driverapi.ErrNotFound)
	assert.Contains(t, err.Error(), "namespace is gone")
	assert.Contains(t, sandboxLinks(t, e1.sb), "eth0", "the interface is left to the controller")
	require.NoError(t, restoreEP(e1, false))
	require.NoError(t, h1.d.FinishRestore(ctx))
	assert.False(t, exists(path))

	// Whatever held the namespace lets it go: the interface goes with it
	// (the old vxlan0 too, freeing its VNI).
	require.NoError(t, held.Close())
	gone(t, e1.sb)
	require.Eventually(t, func() bool {
		_, err := h1.d.Join(ctx, driverapi.JoinRequest{NetworkID: nid, EndpointID: "e1", Sandbox: e1.sb, InterfaceName: "eth0", MAC: e1.mac, IPv4: e1.ip})
		if errors.Is(err, driverapi.ErrExists) {
			return false // the old vxlan0 lingers until the kernel destroys its namespace
		}
		require.NoError(t, err)
		return true
	}, 5*time.Second, 20*time.Millisecond)
	l, err := e1.sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	require.NoError(t, e1.sb.AddAddress(ctx, l.Index, e1.ip))
	require.NoError(t, e1.sb.LinkUp(ctx, l.Index, false))
	got, err := ask(e1.sb, netip.MustParseAddrPort("10.85.0.9:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "p", got)

	lab.finish(t, e1, p)
}

// TestInternalNetworkAndNoGateway: an internal network is recorded like
// any other, and Join reports no gateway (nor routes, nor a link to move)
// on internal and other networks alike: egress is the controller's
// business (a gateway bridge network).
func TestInternalNetworkAndNoGateway(t *testing.T) {
	h1, _ := newHosts(t, 1500)
	ctx := context.Background()
	internal := testNet("1a1a1a1a1a1a-internal", 4250, "10.86.0.0/24")
	internal.Internal = true
	require.NoError(t, h1.d.CreateNetwork(ctx, internal))
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet("2b2b2b2b2b2b-public", 4251, "10.87.0.0/24")))
	assert.True(t, h1.d.hasNetwork(internal.ID))
	assert.True(t, h1.d.hasNetwork("2b2b2b2b2b2b-public"))
	assert.False(t, h1.d.hasNetwork("nope"))
	n, err := h1.d.network(internal.ID)
	require.NoError(t, err)
	assert.True(t, n.internal)

	for i, nid := range []string{internal.ID, "2b2b2b2b2b2b-public"} {
		sb, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "sb"))
		require.NoError(t, err)
		require.NoError(t, h1.d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: nid, EndpointID: "e"}))
		resp, err := h1.d.Join(ctx, driverapi.JoinRequest{NetworkID: nid, EndpointID: "e", Sandbox: sb, InterfaceName: "eth0",
			IPv4: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.2/24", 86+i))})
		require.NoError(t, err)
		assert.Equal(t, driverapi.JoinResponse{}, resp, nid)
		require.NoError(t, h1.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: nid, EndpointID: "e", Sandbox: sb}))
		require.NoError(t, h1.d.DeleteEndpoint(ctx, nid, "e"))
		require.NoError(t, sb.Delete())
		require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	}
	assert.False(t, h1.d.hasNetwork(internal.ID))

	// Two IDs that would share a namespace are refused, naming both.
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet("0123456789ab-one", 4252, "10.88.0.0/24")))
	err = h1.d.CreateNetwork(ctx, testNet("0123456789ab-two", 4253, "10.89.0.0/24"))
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.Contains(t, err.Error(), "0123456789ab-one")
	assert.Contains(t, err.Error(), "0123456789ab-two")
	require.NoError(t, h1.d.DeleteNetwork(ctx, "0123456789ab-one"))
	assertClean(t, h1)
}
