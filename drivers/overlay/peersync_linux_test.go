package overlay

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
)

// kernelPeers returns what a network's vxlan0 holds, sorted: its FDB
// entries as "MAC>VTEP" and its neighbour entries as "IP>MAC".
func kernelPeers(t *testing.T, sb *sandbox) (fdbs, neighs []string) {
	t.Helper()
	f, n := programmed(t, sb)
	for _, r := range f {
		fdbs = append(fdbs, r.MAC+">"+r.VTEP.String())
	}
	for _, e := range n {
		neighs = append(neighs, e.IP.String()+">"+e.MAC.String())
	}
	slices.Sort(fdbs)
	slices.Sort(neighs)
	return fdbs, neighs
}

// peerList returns the driver's peers of network nid as "IP MAC VTEP",
// sorted.
func peerList(d *Driver, nid string) []string {
	var out []string
	for _, p := range d.knownPeers(nid) {
		out = append(out, fmt.Sprintf("%s %s %s", p.IP, p.MAC, p.VTEP))
	}
	slices.Sort(out)
	return out
}

// testPeer is a peer of network nid.
func testPeer(nid, ip, mac string, vtep netip.Addr) Peer {
	return Peer{NetworkID: nid, IP: netip.MustParseAddr(ip), MAC: mustMAC(mac), VTEP: vtep}
}

// TestSyncPeersAfterRestore: peers A (an endpoint of host 2, with two
// addresses) and B are programmed on host 1; its controller restarts, and
// while it was down B went and A lost its second address. The new driver
// takes the network back and only learns A through SyncPeers, after
// FinishRestore (which keeps the entries of peers it does not know): B's
// FDB and neighbour entries and A's second address's neighbour entry are
// deleted from vxlan0, A's entries stay, and the connection to A carries
// on. SyncPeers again changes nothing.
func TestSyncPeersAfterRestore(t *testing.T) {
	const nid = "5ca1ab1e0000-sync"
	lab := newLab(t, 1500, testNet(nid, 4300, "10.90.0.0/24"))
	h1, h2 := lab.h1, lab.h2
	ctx := context.Background()
	ep1, ep2 := lab.pair(t, epSpec{"ep1", "10.90.0.2/24", "02:00:00:00:90:02"}, epSpec{"ep2", "10.90.0.3/24", "02:00:00:00:90:03"})
	a := ep2.peer() // added on h1 by pair
	a2 := testPeer(nid, "10.90.0.33", "02:00:00:00:90:03", h2.vtep)
	b := testPeer(nid, "10.90.0.9", "02:00:00:00:90:09", netip.MustParseAddr("192.0.2.9"))
	for _, p := range []Peer{a2, b} {
		require.NoError(t, h1.d.AddPeer(ctx, p))
	}
	echo(t, ep2.sb, 7000)
	serve(t, ep2.sb, 8080, "ep2")
	conn := dialEcho(t, ep1.sb, "10.90.0.3:7000")
	require.NoError(t, roundTrip(conn, "before"))

	restart(t, h1)
	require.NoError(t, h1.d.RestoreNetwork(ctx, testNet(nid, 4300, "10.90.0.0/24")))
	require.NoError(t, restoreEP(ep1, true))
	require.NoError(t, h1.d.FinishRestore(ctx))
	fdbs, neighs := kernelPeers(t, networkNS(t, h1, nid))
	assert.Equal(t, []string{"02:00:00:00:90:03>192.0.2.2", "02:00:00:00:90:09>192.0.2.9"}, fdbs, "the restore keeps what it cannot explain")
	assert.Equal(t, []string{"10.90.0.33>02:00:00:00:90:03", "10.90.0.3>02:00:00:00:90:03", "10.90.0.9>02:00:00:00:90:09"}, neighs)

	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{a}))
	for range 2 {
		fdbs, neighs = kernelPeers(t, networkNS(t, h1, nid))
		assert.Equal(t, []string{"02:00:00:00:90:03>192.0.2.2"}, fdbs, "B's FDB entry is gone, A's (shared with its old second address) stays")
		assert.Equal(t, []string{"10.90.0.3>02:00:00:00:90:03"}, neighs, "B's and A's second address's neighbour entries are gone")
		assert.Equal(t, []string{"10.90.0.3 02:00:00:00:90:03 192.0.2.2"}, peerList(h1.d, nid))
		require.NoError(t, roundTrip(conn, "after"), "the established connection carries on")
		got, err := ask(ep1.sb, netip.MustParseAddrPort("10.90.0.3:8080"), 3*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "ep2", got)
		require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{a}), "SyncPeers is idempotent")
	}

	conn.Close()
	lab.finish(t, ep1, ep2)
}

// TestSyncPeersLive: SyncPeers on a network with a namespace adds peers,
// replaces those with a new MAC or a new VTEP (both addresses of one
// endpoint), removes those not listed and entries vxlan0 holds that the
// driver never knew, ignores this host's own endpoints, and is
// idempotent. A kernel error halfway undoes what was done, and the next
// SyncPeers finishes the job. An empty list removes everything.
func TestSyncPeersLive(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "5ca1ab1e0001-live"
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4301, "10.91.0.0/24")))
	ep := join(t, h1, nid, "ep", "10.91.0.2/24", "02:00:00:00:91:02")
	v50, v60 := netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("192.0.2.60")
	for _, p := range []Peer{
		testPeer(nid, "10.91.0.11", "02:00:00:00:91:11", h2.vtep),
		testPeer(nid, "10.91.0.12", "02:00:00:00:91:12", h2.vtep),
		testPeer(nid, "10.91.0.13", "02:00:00:00:91:13", h2.vtep),
		testPeer(nid, "10.91.0.113", "02:00:00:00:91:13", h2.vtep),
		testPeer(nid, "10.91.0.15", "02:00:00:00:91:15", v50),
	} {
		require.NoError(t, h1.d.AddPeer(ctx, p))
	}
	sb := networkNS(t, h1, nid)
	// Entries the driver never knew of (another driver's, before a crash).
	require.NoError(t, sb.setFDB(ctx, mustMAC("02:00:00:00:91:77"), netip.MustParseAddr("192.0.2.77")))
	require.NoError(t, sb.setNeighbour(ctx, netip.MustParseAddr("10.91.0.77"), mustMAC("02:00:00:00:91:77")))
	fdbs, neighs := kernelPeers(t, sb)
	require.Len(t, fdbs, 5)
	require.Len(t, neighs, 6)

	want := []Peer{
		testPeer(nid, "10.91.0.11", "02:00:00:00:91:11", h2.vtep), // kept
		testPeer(nid, "10.91.0.12", "02:00:00:00:91:22", h2.vtep), // new MAC
		testPeer(nid, "10.91.0.13", "02:00:00:00:91:13", v60),     // new VTEP, both addresses
		testPeer(nid, "10.91.0.113", "02:00:00:00:91:13", v60),
		testPeer(nid, "10.91.0.14", "02:00:00:00:91:14", h2.vtep), // new
		testPeer(nid, "10.91.0.2", "02:00:00:00:91:02", h1.vtep),  // this host's: ignored
		testPeer(nid, "10.91.0.11", "02:00:00:00:91:11", h2.vtep), // given twice, the same
	}
	wantFDB := []string{"02:00:00:00:91:11>192.0.2.2", "02:00:00:00:91:13>192.0.2.60", "02:00:00:00:91:14>192.0.2.2", "02:00:00:00:91:22>192.0.2.2"}
	wantNeigh := []string{"10.91.0.113>02:00:00:00:91:13", "10.91.0.11>02:00:00:00:91:11", "10.91.0.12>02:00:00:00:91:22", "10.91.0.13>02:00:00:00:91:13", "10.91.0.14>02:00:00:00:91:14"}
	wantPeers := []string{
		"10.91.0.11 02:00:00:00:91:11 192.0.2.2", "10.91.0.113 02:00:00:00:91:13 192.0.2.60", "10.91.0.12 02:00:00:00:91:22 192.0.2.2",
		"10.91.0.13 02:00:00:00:91:13 192.0.2.60", "10.91.0.14 02:00:00:00:91:14 192.0.2.2",
	}
	for range 2 {
		require.NoError(t, h1.d.SyncPeers(ctx, nid, want))
		fdbs, neighs = kernelPeers(t, sb)
		assert.Equal(t, wantFDB, fdbs)
		assert.Equal(t, wantNeigh, neighs)
		assert.Equal(t, wantPeers, peerList(h1.d, nid))
	}

	// A kernel error (the fault hook) at the first change, then at the
	// fourth: everything is as it was.
	next := []Peer{
		testPeer(nid, "10.91.0.11", "02:00:00:00:91:aa", h2.vtep),
		testPeer(nid, "10.91.0.13", "02:00:00:00:91:13", h2.vtep),
		testPeer(nid, "10.91.0.16", "02:00:00:00:91:16", v50),
	}
	for _, failAt := range []int{1, 4} {
		calls := 0
		h1.d.fault = func(step string) error {
			if step == "sync" {
				if calls++; calls == failAt {
					return assert.AnError
				}
			}
			return nil
		}
		err := h1.d.SyncPeers(ctx, nid, next)
		require.ErrorIs(t, err, assert.AnError, "failing at change %d", failAt)
		if failAt == 1 {
			assert.Contains(t, err.Error(), "nothing was changed")
		} else {
			assert.Contains(t, err.Error(), "the 3 changes made before were undone")
		}
		fdbs, neighs = kernelPeers(t, sb)
		assert.Equal(t, wantFDB, fdbs, "failing at change %d", failAt)
		assert.Equal(t, wantNeigh, neighs, "failing at change %d", failAt)
		assert.Equal(t, wantPeers, peerList(h1.d, nid), "failing at change %d", failAt)
	}
	h1.d.fault = nil
	require.NoError(t, h1.d.SyncPeers(ctx, nid, next))
	fdbs, neighs = kernelPeers(t, sb)
	assert.Equal(t, []string{"02:00:00:00:91:13>192.0.2.2", "02:00:00:00:91:16>192.0.2.50", "02:00:00:00:91:aa>192.0.2.2"}, fdbs)
	assert.Equal(t, []string{"10.91.0.11>02:00:00:00:91:aa", "10.91.0.13>02:00:00:00:91:13", "10.91.0.16>02:00:00:00:91:16"}, neighs)

	// One MAC at two VTEPs: the lowest IP's wins, whatever the order.
	split := []Peer{
		testPeer(nid, "10.91.0.40", "02:00:00:00:91:40", v60),
		testPeer(nid, "10.91.0.4", "02:00:00:00:91:40", v50),
	}
	for range 2 {
		require.NoError(t, h1.d.SyncPeers(ctx, nid, split))
		slices.Reverse(split)
		fdbs, neighs = kernelPeers(t, sb)
		assert.Equal(t, []string{"02:00:00:00:91:40>192.0.2.50"}, fdbs)
		assert.Equal(t, []string{"10.91.0.40>02:00:00:00:91:40", "10.91.0.4>02:00:00:00:91:40"}, neighs)
	}

	require.NoError(t, h1.d.SyncPeers(ctx, nid, nil))
	fdbs, neighs = kernelPeers(t, sb)
	assert.Empty(t, fdbs)
	assert.Empty(t, neighs)
	assert.Empty(t, h1.d.knownPeers(nid))

	ep.leave(t)
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	assertClean(t, h1)
}

// TestSyncPeersUnknownNetwork: the peers of a network the driver does not
// know yet are remembered and programmed at its first join; those of a
// network without a namespace are replaced without a kernel call.
func TestSyncPeersUnknownNetwork(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "5ca1ab1e0002-later"
	old := testPeer(nid, "10.93.0.8", "02:00:00:00:93:08", h2.vtep)
	p := testPeer(nid, "10.93.0.9", "02:00:00:00:93:09", h2.vtep)
	require.NoError(t, h1.d.AddPeer(ctx, old))
	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{p}))
	assert.Equal(t, []string{"10.93.0.9 02:00:00:00:93:09 192.0.2.2"}, peerList(h1.d, nid))
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4302, "10.93.0.0/24")))
	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{p}), "a network without a namespace")
	ep := join(t, h1, nid, "ep", "10.93.0.2/24", "02:00:00:00:93:02")
	fdbs, neighs := kernelPeers(t, networkNS(t, h1, nid))
	assert.Equal(t, []string{"02:00:00:00:93:09>192.0.2.2"}, fdbs)
	assert.Equal(t, []string{"10.93.0.9>02:00:00:00:93:09"}, neighs)
	ep.leave(t)
	require.NoError(t, h1.d.SyncPeers(ctx, nid, nil))
	assert.Empty(t, h1.d.knownPeers(nid))
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	assertClean(t, h1)
}

// TestSyncPeersRefusals: a list with one bad peer is refused with an
// error naming the field and value, before anything changes: the kernel
// entries and the peer table stay as they were, though the rest of the
// list would change both.
func TestSyncPeersRefusals(t *testing.T) {
	h1, h2 := newHosts(t, 1500)
	ctx := context.Background()
	const nid = "5ca1ab1e0003-bad"
	require.NoError(t, h1.d.CreateNetwork(ctx, testNet(nid, 4303, "10.92.0.0/24")))
	ep := join(t, h1, nid, "ep", "10.92.0.2/24", "02:00:00:00:92:02")
	require.NoError(t, h1.d.AddPeer(ctx, testPeer(nid, "10.92.0.3", "02:00:00:00:92:03", h2.vtep)))
	require.NoError(t, h1.d.AddPeer(ctx, testPeer(nid, "10.92.0.4", "02:00:00:00:92:04", h2.vtep)))
	sb := networkNS(t, h1, nid)
	fdbs, neighs := kernelPeers(t, sb)
	peers := peerList(h1.d, nid)
	require.Len(t, peers, 2)

	good := func() []Peer {
		return []Peer{
			testPeer(nid, "10.92.0.3", "02:00:00:00:92:33", h2.vtep), // replaced
			testPeer(nid, "10.92.0.5", "02:00:00:00:92:05", h2.vtep), // added (and .4 removed)
		}
	}
	bad := func(edit func(*Peer)) []Peer {
		p := testPeer(nid, "10.92.0.6", "02:00:00:00:92:06", h2.vtep)
		edit(&p)
		return append(good(), p)
	}
	for _, c := range []struct {
		name  string
		nid   string
		peers []Peer
		want  string
	}{
		{"no network ID", "", good(), "network ID: missing"},
		{"other network", nid, bad(func(p *Peer) { p.NetworkID = "other" }), `NetworkID="other"`},
		{"no peer network", nid, bad(func(p *Peer) { p.NetworkID = "" }), "NetworkID: missing"},
		{"no IP", nid, bad(func(p *Peer) { p.IP = netip.Addr{} }), "IP=invalid IP"},
		{"multicast IP", nid, bad(func(p *Peer) { p.IP = netip.MustParseAddr("224.0.0.9") }), "IP=224.0.0.9"},
		{"mapped IP", nid, bad(func(p *Peer) { p.IP = netip.MustParseAddr("::ffff:10.92.0.6") }), "IP=::ffff:10.92.0.6"},
		{"short MAC", nid, bad(func(p *Peer) { p.MAC = p.MAC[:5] }), `MAC="02:00:00:00:92"`},
		{"multicast MAC", nid, bad(func(p *Peer) { p.MAC = mustMAC("03:00:00:00:92:06") }), `MAC="03:00:00:00:92:06"`},
		{"no VTEP", nid, bad(func(p *Peer) { p.VTEP = netip.Addr{} }), "VTEP: missing"},
		{"loopback VTEP", nid, bad(func(p *Peer) { p.VTEP = netip.MustParseAddr("127.0.0.1") }), "VTEP=127.0.0.1"},
		{"VTEP of the other family", nid, bad(func(p *Peer) { p.VTEP = netip.MustParseAddr("2001:db8::1") }), "VTEP=2001:db8::1"},
		{"an IP twice", nid, bad(func(p *Peer) { p.IP = netip.MustParseAddr("10.92.0.5") }), "IP=10.92.0.5: given twice"},
		{"an own IP twice", nid, bad(func(p *Peer) { p.IP, p.VTEP = netip.MustParseAddr("10.92.0.3"), h1.vtep }), "IP=10.92.0.3: given twice"},
	} {
		err := h1.d.SyncPeers(ctx, c.nid, c.peers)
		require.ErrorIs(t, err, driverapi.ErrInvalid, c.name)
		assert.Contains(t, err.Error(), c.want, c.name)
		f, n := kernelPeers(t, sb)
		assert.Equal(t, fdbs, f, c.name)
		assert.Equal(t, neighs, n, c.name)
		assert.Equal(t, peers, peerList(h1.d, nid), c.name)
	}
	// A refused list for a network not known yet remembers nothing.
	err := h1.d.SyncPeers(ctx, "unknown", []Peer{testPeer("unknown", "10.92.0.7", "01:00:00:00:92:07", h2.vtep)})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Empty(t, h1.d.knownPeers("unknown"))

	// The good list alone is taken.
	require.NoError(t, h1.d.SyncPeers(ctx, nid, good()))
	f, n := kernelPeers(t, sb)
	assert.Equal(t, []string{"02:00:00:00:92:05>192.0.2.2", "02:00:00:00:92:33>192.0.2.2"}, f)
	assert.Equal(t, []string{"10.92.0.3>02:00:00:00:92:33", "10.92.0.5>02:00:00:00:92:05"}, n)

	ep.leave(t)
	require.NoError(t, h1.d.DeleteNetwork(ctx, nid))
	assertClean(t, h1)
}

// TestSyncPeersKeepsTCP: TCP between two hosts' endpoints, an established
// connection and new ones, works on after SyncPeers on both hosts that
// keep the peer (with another added, this host's own endpoint listed);
// a SyncPeers without it cuts new connections, one with it brings them
// back.
func TestSyncPeersKeepsTCP(t *testing.T) {
	const nid = "5ca1ab1e0004-tcp"
	lab := newLab(t, 1500, testNet(nid, 4304, "10.94.0.0/24"))
	h1, h2 := lab.h1, lab.h2
	ctx := context.Background()
	ep1, ep2 := lab.pair(t, epSpec{"ep1", "10.94.0.2/24", "02:00:00:00:94:02"}, epSpec{"ep2", "10.94.0.3/24", "02:00:00:00:94:03"})
	echo(t, ep2.sb, 7000)
	serve(t, ep2.sb, 8080, "ep2")
	serve(t, ep1.sb, 8080, "ep1")
	conn := dialEcho(t, ep1.sb, "10.94.0.3:7000")
	require.NoError(t, roundTrip(conn, "before"))

	other := testPeer(nid, "10.94.0.9", "02:00:00:00:94:09", netip.MustParseAddr("192.0.2.9"))
	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{other, ep2.peer(), ep1.peer()}))
	require.NoError(t, h2.d.SyncPeers(ctx, nid, []Peer{ep1.peer(), ep2.peer()}))
	require.NoError(t, roundTrip(conn, "after"))
	got, err := ask(ep1.sb, netip.MustParseAddrPort("10.94.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)
	got, err = ask(ep2.sb, netip.MustParseAddrPort("10.94.0.2:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep1", got)

	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{other}))
	_, err = ask(ep1.sb, netip.MustParseAddrPort("10.94.0.3:8080"), 500*time.Millisecond)
	assert.Error(t, err, "no peer, no path")
	require.NoError(t, h1.d.SyncPeers(ctx, nid, []Peer{ep2.peer()}))
	got, err = ask(ep1.sb, netip.MustParseAddrPort("10.94.0.3:8080"), 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "ep2", got)
	require.NoError(t, roundTrip(conn, "again"))

	conn.Close()
	lab.finish(t, ep1, ep2)
}
