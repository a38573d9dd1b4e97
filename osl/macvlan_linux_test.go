package osl

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TestMacvlanModeValues checks the modes, spelled out in macvlan.go so that
// they exist on every OS, against the kernel's MACVLAN_MODE_* values.
func TestMacvlanModeValues(t *testing.T) {
	assert.EqualValues(t, nl.MACVLAN_MODE_PRIVATE, MacvlanPrivate)
	assert.EqualValues(t, nl.MACVLAN_MODE_VEPA, MacvlanVEPA)
	assert.EqualValues(t, nl.MACVLAN_MODE_BRIDGE, MacvlanBridge)
	assert.EqualValues(t, nl.MACVLAN_MODE_PASSTHRU, MacvlanPassthru)
}

// linkNames lists the names of ns's links.
func linkNames(t *testing.T, ns *Namespace) []string {
	t.Helper()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	return sortStrings(names)
}

// lowerFixture makes, in host, a veth end "eth1" (up, MTU 1500) whose peer
// sits in a namespace of its own: a stand-in for a physical interface.
func lowerFixture(t *testing.T, host *Namespace) Link {
	t.Helper()
	ctx := context.Background()
	wire := newTestNS(t)
	require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: "eth1", PeerName: "wire0", PeerNS: wire, MTU: 1500}))
	l, err := host.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	return l
}

// TestAddMacvlanInsideOtherNamespace checks that the macvlan link is born
// inside the target namespace in every mode, named, with MAC and MTU, down,
// and that nothing of it appears in the parent's namespace.
func TestAddMacvlanInsideOtherNamespace(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	parent := lowerFixture(t, host)
	for _, tc := range []struct {
		mode MacvlanMode
		want netlink.MacvlanMode
	}{
		{MacvlanBridge, netlink.MACVLAN_MODE_BRIDGE},
		{MacvlanPrivate, netlink.MACVLAN_MODE_PRIVATE},
		{MacvlanVEPA, netlink.MACVLAN_MODE_VEPA},
		{MacvlanPassthru, netlink.MACVLAN_MODE_PASSTHRU},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			sb := newTestNS(t)
			mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0, 0, 7}
			require.NoError(t, host.AddMacvlan(ctx, MacvlanSpec{Name: "eth0", ParentIndex: parent.Index, NS: sb, Mode: tc.mode, MAC: mac, MTU: 1400}))
			l, err := sb.LinkByName(ctx, "eth0")
			require.NoError(t, err)
			assert.Equal(t, "macvlan", l.Kind)
			assert.Equal(t, 1400, l.MTU)
			assert.False(t, l.Up, "down until the caller configures it")
			if tc.mode == MacvlanPassthru {
				assert.Equal(t, parent.MAC, l.MAC, "passthru takes the parent's MAC")
			} else {
				assert.Equal(t, mac, l.MAC)
			}
			h, err := sb.h()
			require.NoError(t, err)
			nl, err := h.LinkByName("eth0")
			require.NoError(t, err)
			require.IsType(t, &netlink.Macvlan{}, nl)
			assert.Equal(t, tc.want, nl.(*netlink.Macvlan).Mode)
			assert.Equal(t, []string{"eth1", "lo"}, linkNames(t, host), "nothing made in the parent's namespace")
			require.NoError(t, sb.LinkUp(ctx, l.Index, false))
			require.NoError(t, sb.DeleteLink(ctx, "eth0"))
		})
	}
}

// TestAddMacvlanFailsAtomically checks each refusal and that none leaves a
// link anywhere.
func TestAddMacvlanFailsAtomically(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	parent := lowerFixture(t, host)
	sb := newTestNS(t)
	require.NoError(t, host.AddMacvlan(ctx, MacvlanSpec{Name: "eth0", ParentIndex: parent.Index, NS: sb, Mode: MacvlanBridge}))

	for _, tc := range []struct {
		name string
		spec MacvlanSpec
		is   error
	}{
		{"name taken", MacvlanSpec{Name: "eth0", ParentIndex: parent.Index, NS: sb, Mode: MacvlanBridge}, unix.EEXIST},
		{"no parent", MacvlanSpec{Name: "eth1", ParentIndex: 9999, NS: sb, Mode: MacvlanBridge}, unix.ENODEV},
		{"mtu above parent", MacvlanSpec{Name: "eth1", ParentIndex: parent.Index, NS: sb, Mode: MacvlanBridge, MTU: 1501}, unix.EINVAL},
		{"multicast mac", MacvlanSpec{Name: "eth1", ParentIndex: parent.Index, NS: sb, Mode: MacvlanBridge, MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}, unix.EADDRNOTAVAIL},
		{"no mode", MacvlanSpec{Name: "eth1", ParentIndex: parent.Index, NS: sb}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := host.AddMacvlan(ctx, tc.spec)
			require.Error(t, err)
			if tc.is != nil {
				assert.ErrorIs(t, err, tc.is)
			}
			assert.Equal(t, []string{"eth0", "lo"}, linkNames(t, sb))
			assert.Equal(t, []string{"eth1", "lo"}, linkNames(t, host))
		})
	}
}

// TestAddMacvlanOnPortlessBridge checks what the macvlan driver's internal
// networks rely on: a bridge without ports is a valid, carrier-up parent.
func TestAddMacvlanOnPortlessBridge(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	br, err := host.AddBridge(ctx, BridgeSpec{Name: "mvi0"})
	require.NoError(t, err)
	require.NoError(t, host.SetNoLinkLocal(ctx, br))
	require.NoError(t, host.LinkUp(ctx, br, false))
	addrs, err := host.Addresses(ctx, br)
	require.NoError(t, err)
	assert.Empty(t, addrs, "no IPv6 link-local address")
	sb := newTestNS(t)
	require.NoError(t, host.AddMacvlan(ctx, MacvlanSpec{Name: "eth0", ParentIndex: br, NS: sb, Mode: MacvlanBridge}))
	h, err := host.h()
	require.NoError(t, err)
	l, err := h.LinkByIndex(br)
	require.NoError(t, err)
	assert.NotEqual(t, uint8(netlink.OperDown), uint8(l.Attrs().OperState), "a portless bridge has carrier")
}

// TestAddIPvlan checks ipvlan links where the kernel has ipvlan, and the
// clear error where it has not.
func TestAddIPvlan(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	parent := lowerFixture(t, host)
	sb := newTestNS(t)
	err := host.AddIPvlan(ctx, IPvlanSpec{Name: "eth0", ParentIndex: parent.Index, NS: sb, Mode: IPvlanL3, MTU: 1400})
	if errors.Is(err, ErrKindNotSupported) {
		require.ErrorIs(t, err, unix.EOPNOTSUPP)
		assert.Equal(t, []string{"lo"}, linkNames(t, sb))
		t.Skipf("kernel has no ipvlan: %v", err)
	}
	require.NoError(t, err)
	l, err := sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, "ipvlan", l.Kind)
	assert.Equal(t, parent.MAC, l.MAC)
	assert.Equal(t, 1400, l.MTU)
	assert.Equal(t, []string{"eth1", "lo"}, linkNames(t, host))
}

// TestAddVLAN checks 802.1Q sub-interfaces where the kernel has them, and
// the clear error where it has not.
func TestAddVLAN(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	parent := lowerFixture(t, host)
	_, err := host.AddVLAN(ctx, VLANSpec{Name: "eth1.0", ParentIndex: parent.Index, ID: 0})
	require.ErrorContains(t, err, "id 0 out of range")
	_, err = host.AddVLAN(ctx, VLANSpec{Name: "eth1.4095", ParentIndex: parent.Index, ID: 4095})
	require.ErrorContains(t, err, "id 4095 out of range")

	idx, err := host.AddVLAN(ctx, VLANSpec{Name: "eth1.50", ParentIndex: parent.Index, ID: 50, Alias: "cnm:x"})
	if errors.Is(err, ErrKindNotSupported) {
		require.ErrorIs(t, err, unix.EOPNOTSUPP)
		assert.Equal(t, []string{"eth1", "lo"}, linkNames(t, host))
		t.Skipf("kernel has no 802.1Q (8021q) support: %v", err)
	}
	require.NoError(t, err)
	l, err := host.LinkByIndex(ctx, idx)
	require.NoError(t, err)
	assert.Equal(t, "vlan", l.Kind)
	assert.True(t, l.Up)
	assert.Equal(t, "cnm:x", l.Alias)
	h, err := host.h()
	require.NoError(t, err)
	nl, err := h.LinkByIndex(idx)
	require.NoError(t, err)
	assert.Equal(t, 50, nl.(*netlink.Vlan).VlanId)
	_, err = host.AddVLAN(ctx, VLANSpec{Name: "eth1.50", ParentIndex: parent.Index, ID: 51})
	assert.ErrorIs(t, err, unix.EEXIST)
}

func TestSetLinkAlias(t *testing.T) {
	ctx := context.Background()
	ns := newTestNS(t)
	br, err := ns.AddBridge(ctx, BridgeSpec{Name: "b0"})
	require.NoError(t, err)
	require.NoError(t, ns.SetLinkAlias(ctx, br, "cnm:n1"))
	l, err := ns.LinkByIndex(ctx, br)
	require.NoError(t, err)
	assert.Equal(t, "cnm:n1", l.Alias)
	assert.Error(t, ns.SetLinkAlias(ctx, 9999, "x"))
}

// TestSetBridgePortHairpin checks the switch-side helper of VEPA tests.
func TestSetBridgePortHairpin(t *testing.T) {
	ctx := context.Background()
	sw := newTestNS(t)
	other := newTestNS(t)
	br, err := sw.AddBridge(ctx, BridgeSpec{Name: "sw0"})
	require.NoError(t, err)
	require.NoError(t, sw.AddVeth(ctx, VethSpec{HostName: "p0", PeerName: "x", PeerNS: other, MasterIndex: br}))
	require.NoError(t, sw.SetBridgePortHairpin(ctx, "p0", true))
	h, err := sw.h()
	require.NoError(t, err)
	l, err := h.LinkByName("p0")
	require.NoError(t, err)
	pi, err := h.LinkGetProtinfo(l)
	require.NoError(t, err)
	assert.True(t, pi.Hairpin)
	assert.ErrorIs(t, sw.SetBridgePortHairpin(ctx, "missing", true), ErrLinkNotFound)
}
