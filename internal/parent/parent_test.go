package parent

import (
	"context"
	"errors"
	"github.com/seed53641549/cnm/internal/mark"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

func TestParseVLAN(t *testing.T) {
	for _, tc := range []struct {
		name string
		base string
		id   int
		ok   bool
		err  string
	}{
		{"eth1", "", 0, false, ""},
		{"eth1.50", "eth1", 50, true, ""},
		{"bond0.1", "bond0", 1, true, ""},
		{"eth1.4094", "eth1", 4094, true, ""},
		{"a.b.7", "a.b", 7, true, ""},
		{"eth1.0", "", 0, false, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{"eth1.4095", "", 0, false, `vlan id 4095 out of range`},
		{"eth1.99999999999999999999", "", 0, false, `out of range`},
		{"eth1.x5", "", 0, false, ""},
		{"eth1.", "", 0, false, ""},
		{".5", "", 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, id, ok, err := ParseVLAN(tc.name)
			if tc.err != "" {
				require.ErrorIs(t, err, driverapi.ErrInvalid)
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.base, base)
			assert.Equal(t, tc.id, id)
		})
	}
}

// fixture is a host namespace with:
//   - eth1: up, MTU 1500, one end of a veth pair (a stand-in for a NIC);
//   - mv0: a macvlan link on eth1.
//
// testOwner is the controller identity the tests' Tables mark links with.
const testOwner mark.Owner = "0123456789abcdef"

type fixture struct {
	ns   *osl.Namespace
	eth1 osl.Link
}

func newNS(t *testing.T) *osl.Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	ns, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "ns"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
	return ns
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	ctx := context.Background()
	ns := newNS(t)
	wire := newNS(t)
	require.NoError(t, ns.AddVeth(ctx, osl.VethSpec{HostName: "eth1", PeerName: "w1", PeerNS: wire, MTU: 1500}))
	eth1, err := ns.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	require.NoError(t, ns.AddMacvlan(ctx, osl.MacvlanSpec{Name: "mv0", ParentIndex: eth1.Index, Mode: osl.MacvlanBridge}))
	return fixture{ns: ns, eth1: eth1}
}

func names(t *testing.T, ns *osl.Namespace) []string {
	t.Helper()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		out = append(out, l.Name)
	}
	sort.Strings(out)
	return out
}

// TestAcquireRefusesBadParents checks every refusal of a parent, its
// sentinel and message, and that none leaves a link or a record behind.
func TestAcquireRefusesBadParents(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	// A link that is down: the peer end of a pair made inside ns.
	wire := newNS(t)
	require.NoError(t, wire.AddVeth(ctx, osl.VethSpec{HostName: "w3", PeerName: "down0", PeerNS: f.ns}))
	tab := New(f.ns, testOwner)
	before := names(t, f.ns)

	for _, tc := range []struct {
		name    string
		req     Request
		is      error
		mention string
	}{
		{"missing", Request{Name: "eth9"}, driverapi.ErrNotFound, `parent="eth9": no such link`},
		{"loopback", Request{Name: "lo"}, driverapi.ErrInvalid, `parent="lo": the loopback`},
		{"macvlan slave", Request{Name: "mv0"}, driverapi.ErrInvalid, `parent="mv0": is itself a macvlan link`},
		{"down", Request{Name: "down0"}, driverapi.ErrInvalid, `parent="down0": link is down`},
		{"mtu above parent", Request{Name: "eth1", MTU: 1501}, driverapi.ErrInvalid, `mtu=1501: above the MTU 1500 of parent "eth1"`},
		{"vlan id 0", Request{Name: "eth1.0"}, driverapi.ErrInvalid, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{"vlan id 4095", Request{Name: "eth1.4095"}, driverapi.ErrInvalid, `vlan id 4095 out of range`},
		{"vlan base missing", Request{Name: "eth9.50"}, driverapi.ErrNotFound, `parent="eth9.50": neither it nor its base link "eth9"`},
		{"vlan base down", Request{Name: "down0.50"}, driverapi.ErrInvalid, `base link "down0": link is down`},
		{"vlan base is a slave", Request{Name: "mv0.50"}, driverapi.ErrInvalid, `base link "mv0": is itself a macvlan`},
		{"vlan mtu above base", Request{Name: "eth1.50", MTU: 9000}, driverapi.ErrInvalid, `mtu=9000: above the MTU 1500`},
		{"bad name", Request{Name: "a/b"}, driverapi.ErrInvalid, `parent="a/b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.NetworkID, tc.req.Kind = "n1", "macvlan"
			_, err := tab.Acquire(ctx, tc.req)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
			assert.Equal(t, before, names(t, f.ns), "no link made")
			assert.Empty(t, tab.parents, "nothing recorded")
		})
	}
}

// TestSharingRules checks the rules between networks on one parent, and
// that an existing parent is never deleted.
func TestSharingRules(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	tab := New(f.ns, testOwner)
	p := netip.MustParsePrefix
	a, err := tab.Acquire(ctx, Request{NetworkID: "a", Kind: "macvlan", Name: "eth1", Subnets: []netip.Prefix{p("10.1.0.0/24")}})
	require.NoError(t, err)
	assert.Equal(t, Parent{Name: "eth1", Index: f.eth1.Index, MTU: 1500}, a)
	_, err = tab.Acquire(ctx, Request{NetworkID: "b", Kind: "macvlan", Name: "eth1", MTU: 1400, Subnets: []netip.Prefix{p("10.2.0.0/24")}})
	require.NoError(t, err, "two networks share a parent")
	_, err = tab.Acquire(ctx, Request{NetworkID: "a", Kind: "macvlan", Name: "eth1"})
	require.ErrorIs(t, err, driverapi.ErrExists, "a network holds one parent")

	for _, tc := range []struct {
		name    string
		req     Request
		mention string
	}{
		{"overlapping subnet", Request{Kind: "macvlan", Name: "eth1", Subnets: []netip.Prefix{p("10.1.0.128/25")}},
			"overlapping subnet: subnet 10.1.0.128/25 overlaps subnet 10.1.0.0/24 of network a"},
		{"passthru on a used parent", Request{Kind: "macvlan", Name: "eth1", Exclusive: true, ExclusiveWhy: "macvlan_mode=passthru"},
			`option macvlan_mode=passthru: network a already uses parent "eth1"`},
		{"other kind", Request{Kind: "ipvlan", Name: "eth1"},
			`parent="eth1": macvlan network a uses this parent, and macvlan and ipvlan links cannot share one`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.NetworkID = "c"
			_, err := tab.Acquire(ctx, tc.req)
			require.ErrorIs(t, err, driverapi.ErrExists)
			assert.ErrorContains(t, err, tc.mention)
		})
	}

	require.NoError(t, tab.Release(ctx, "a"))
	require.NoError(t, tab.Release(ctx, "b"))
	require.NoError(t, tab.Release(ctx, "b"), "releasing twice is not an error")
	assert.Empty(t, tab.parents)
	l, err := f.ns.LinkByName(ctx, "eth1")
	require.NoError(t, err, "the user's parent is never deleted")
	assert.True(t, l.Up)

	// An exclusive network keeps others off its parent.
	_, err = tab.Acquire(ctx, Request{NetworkID: "x", Kind: "macvlan", Name: "eth1", Exclusive: true, ExclusiveWhy: "macvlan_mode=passthru"})
	require.NoError(t, err)
	_, err = tab.Acquire(ctx, Request{NetworkID: "y", Kind: "macvlan", Name: "eth1"})
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.ErrorContains(t, err, `parent="eth1": network x has this parent alone (passthru)`)
	require.NoError(t, tab.Release(ctx, "x"))
}

// TestInternalParent checks an internal network's own parent: a bridge
// without ports, up, with carrier and no address, deleted on Release; and
// that a fault after it is made leaves nothing.
func TestInternalParent(t *testing.T) {
	ctx := context.Background()
	ns := newNS(t)
	tab := New(ns, testOwner)
	p, err := tab.Acquire(ctx, Request{NetworkID: "n1", Kind: "macvlan", InternalName: "mvi-n1", MTU: 9000})
	require.NoError(t, err)
	assert.Equal(t, Parent{Name: "mvi-n1", Index: p.Index, MTU: 9000, Internal: true}, p)
	l, err := ns.LinkByName(ctx, "mvi-n1")
	require.NoError(t, err)
	assert.Equal(t, "bridge", l.Kind)
	assert.True(t, l.Up)
	assert.Equal(t, 9000, l.MTU)
	assert.Equal(t, testOwner.Link("n1"), l.Alias)
	addrs, err := ns.Addresses(ctx, l.Index)
	require.NoError(t, err)
	assert.Empty(t, addrs, "no address, no IPv6 link-local: the host is not reachable through it")

	_, err = tab.Acquire(ctx, Request{NetworkID: "n2", Kind: "macvlan", InternalName: "mvi-n1"})
	require.ErrorIs(t, err, driverapi.ErrExists, "name taken")

	require.NoError(t, tab.Release(ctx, "n1"))
	assert.Equal(t, []string{"lo"}, names(t, ns))

	// A fault once the bridge is made: it goes again.
	tab.fault = func(step string) error {
		if step == "internal" {
			return errors.New("injected")
		}
		return nil
	}
	_, err = tab.Acquire(ctx, Request{NetworkID: "n3", Kind: "macvlan", InternalName: "mvi-n3"})
	require.ErrorContains(t, err, "injected")
	assert.Equal(t, []string{"lo"}, names(t, ns))
	assert.Empty(t, tab.parents)
}

// TestVLANParent checks 802.1Q sub-interfaces: made when missing, shared,
// deleted with the last network that uses them, never when the user made
// them. On a kernel without 802.1Q it checks the clear error instead, and
// skips.
func TestVLANParent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	tab := New(f.ns, testOwner)
	before := names(t, f.ns)
	_, err := tab.Acquire(ctx, Request{NetworkID: "a", Kind: "macvlan", Name: "eth1.50"})
	if errors.Is(err, driverapi.ErrNotSupported) {
		assert.ErrorContains(t, err, `parent="eth1.50": cannot make the 802.1Q sub-interface (vlan id 50 on eth1): the kernel has no 802.1Q support`)
		assert.Equal(t, before, names(t, f.ns))
		assert.Empty(t, tab.parents)
		t.Skipf("kernel has no 802.1Q (8021q) support: %v", err)
	}
	require.NoError(t, err)
	l, err := f.ns.LinkByName(ctx, "eth1.50")
	require.NoError(t, err)
	assert.Equal(t, "vlan", l.Kind)
	assert.True(t, l.Up)

	_, err = tab.Acquire(ctx, Request{NetworkID: "b", Kind: "macvlan", Name: "eth1.50"})
	require.NoError(t, err)
	require.NoError(t, tab.Release(ctx, "a"))
	_, err = f.ns.LinkByName(ctx, "eth1.50")
	require.NoError(t, err, "kept while network b uses it")
	require.NoError(t, tab.Release(ctx, "b"))
	_, err = f.ns.LinkByName(ctx, "eth1.50")
	require.ErrorIs(t, err, osl.ErrLinkNotFound, "deleted with its last network")

	// One the user made stays.
	_, err = f.ns.AddVLAN(ctx, osl.VLANSpec{Name: "eth1.60", ParentIndex: f.eth1.Index, ID: 60})
	require.NoError(t, err)
	_, err = tab.Acquire(ctx, Request{NetworkID: "c", Kind: "macvlan", Name: "eth1.60"})
	require.NoError(t, err)
	require.NoError(t, tab.Release(ctx, "c"))
	_, err = f.ns.LinkByName(ctx, "eth1.60")
	require.NoError(t, err, "the user's sub-interface is never deleted")

	// A fault once the sub-interface is made: it goes again.
	tab.fault = func(step string) error { return errors.New("injected") }
	_, err = tab.Acquire(ctx, Request{NetworkID: "d", Kind: "macvlan", Name: "eth1.70"})
	require.ErrorContains(t, err, "injected")
	_, err = f.ns.LinkByName(ctx, "eth1.70")
	require.ErrorIs(t, err, osl.ErrLinkNotFound)
}

// TestRestore checks taking networks back after a restart: an internal
// parent is adopted, or made again when gone; a parent that is missing does
// not fail the restore; a link with cnm's mark (a sub-interface made before
// the restart) is deleted with its last network, and while it is shared
// its mark moves from a leaving network to one that stays.
func TestRestore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	tab := New(f.ns, testOwner)
	p, err := tab.Acquire(ctx, Request{NetworkID: "i", Kind: "macvlan", InternalName: "mvi-i"})
	require.NoError(t, err)

	tab2 := New(f.ns, testOwner) // the restarted controller's
	p2, err := tab2.Acquire(ctx, Request{NetworkID: "i", Kind: "macvlan", InternalName: "mvi-i", Restore: true})
	require.NoError(t, err)
	assert.Equal(t, p, p2, "adopted")
	require.NoError(t, f.ns.DeleteLink(ctx, "mvi-i"))
	tab3 := New(f.ns, testOwner)
	p3, err := tab3.Acquire(ctx, Request{NetworkID: "i", Kind: "macvlan", InternalName: "mvi-i", Restore: true})
	require.NoError(t, err)
	assert.NotEqual(t, p.Index, p3.Index, "made again")
	require.NoError(t, tab3.Release(ctx, "i"))

	p4, err := tab3.Acquire(ctx, Request{NetworkID: "m", Kind: "macvlan", Name: "eth7", Restore: true})
	require.NoError(t, err, "a missing parent does not fail a restore")
	assert.Equal(t, Parent{Name: "eth7"}, p4)
	require.NoError(t, tab3.Release(ctx, "m"))

	// A link with another network's mark (a bridge of the bridge driver)
	// is not the Table's: it stays.
	other, err := f.ns.AddBridge(ctx, osl.BridgeSpec{Name: "br-other", Alias: testOwner.Link("bridge-net")})
	require.NoError(t, err)
	require.NoError(t, f.ns.LinkUp(ctx, other, false))
	_, err = tab3.Acquire(ctx, Request{NetworkID: "o", Kind: "macvlan", Name: "br-other", Restore: true})
	require.NoError(t, err)
	require.NoError(t, tab3.Release(ctx, "o"))
	_, err = f.ns.LinkByName(ctx, "br-other")
	require.NoError(t, err, "not ours: kept")
	require.NoError(t, f.ns.DeleteLink(ctx, "br-other"))

	// A marked link shared by two networks; the one it is marked with is
	// restored last.
	br, err := f.ns.AddBridge(ctx, osl.BridgeSpec{Name: "shared0", Alias: testOwner.Link("a")})
	require.NoError(t, err)
	require.NoError(t, f.ns.LinkUp(ctx, br, false))
	for _, id := range []string{"b", "a"} {
		_, err := tab3.Acquire(ctx, Request{NetworkID: id, Kind: "macvlan", Name: "shared0", Restore: true})
		require.NoError(t, err)
	}
	require.NoError(t, tab3.Release(ctx, "a"))
	l, err := f.ns.LinkByName(ctx, "shared0")
	require.NoError(t, err, "kept for b")
	assert.Equal(t, testOwner.Link("b"), l.Alias, "the mark moved to the network that stays")
	require.NoError(t, tab3.Release(ctx, "b"))
	_, err = f.ns.LinkByName(ctx, "shared0")
	assert.ErrorIs(t, err, osl.ErrLinkNotFound, "deleted with its last network")
	assert.Equal(t, []string{"eth1", "lo", "mv0"}, names(t, f.ns))
}
