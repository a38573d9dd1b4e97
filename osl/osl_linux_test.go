package osl

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func newTestNS(t *testing.T) *Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces")
	}
	ns, err := NewNamespace(context.Background(), filepath.Join(t.TempDir(), "ns"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
	return ns
}

func TestNewNamespaceIsFreshAndLoopbackUp(t *testing.T) {
	ctx := context.Background()
	ns := newTestNS(t)
	links, err := ns.Links(ctx)
	require.NoError(t, err)
	require.Len(t, links, 1)
	assert.Equal(t, "lo", links[0].Name)
	assert.True(t, links[0].Up)

	// The calling thread never moved: our own namespace differs from ns.
	ino, err := ns.Inode()
	require.NoError(t, err)
	var st unix.Stat_t
	require.NoError(t, unix.Stat("/proc/thread-self/ns/net", &st))
	assert.NotEqual(t, st.Ino, ino)
}

func TestNewNamespaceExistingPathFailsAndLeavesFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	p := filepath.Join(t.TempDir(), "taken")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
	_, err := NewNamespace(context.Background(), p)
	require.ErrorIs(t, err, os.ErrExist)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "x", string(b))
}

func TestDeleteUnmounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	p := filepath.Join(t.TempDir(), "ns")
	ns, err := NewNamespace(context.Background(), p)
	require.NoError(t, err)
	require.NoError(t, ns.Delete())
	require.NoError(t, ns.Delete(), "second delete is not an error")
	_, err = os.Stat(p)
	assert.ErrorIs(t, err, os.ErrNotExist)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	assert.NotContains(t, string(mounts), p)
	_, err = ns.Links(context.Background())
	assert.ErrorIs(t, err, ErrClosed)
}

func TestOpenNamespaceAdoptsWithoutOwning(t *testing.T) {
	ctx := context.Background()
	owner := newTestNS(t)
	ns, err := OpenNamespace(ctx, owner.Path())
	require.NoError(t, err)
	a, _ := owner.Inode()
	b, _ := ns.Inode()
	assert.Equal(t, a, b)
	require.NoError(t, ns.Delete()) // only closes
	_, err = os.Stat(owner.Path())
	require.NoError(t, err)

	_, err = OpenNamespace(ctx, filepath.Join(t.TempDir(), "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	f := filepath.Join(t.TempDir(), "plain")
	require.NoError(t, os.WriteFile(f, nil, 0o644))
	_, err = OpenNamespace(ctx, f)
	assert.ErrorContains(t, err, "not a network namespace")
}

func TestAddVethOneRequest(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	sb := newTestNS(t)
	mac := net.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0, 2}

	br, err := host.AddBridge(ctx, BridgeSpec{Name: "br-test", MTU: 1400})
	require.NoError(t, err)
	require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: "vethA", PeerName: "eth0", PeerNS: sb, MasterIndex: br, MTU: 1400, PeerMAC: mac}))

	hl, err := host.LinkByName(ctx, "vethA")
	require.NoError(t, err)
	assert.Equal(t, br, hl.MasterIndex, "host end is already a bridge port")
	assert.True(t, hl.Up, "host end is up")
	assert.Equal(t, 1400, hl.MTU)

	pl, err := sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, hl.Index, pl.PeerIndex, "the peer names the host end")
	byIndex, err := host.LinkByIndex(ctx, pl.PeerIndex)
	require.NoError(t, err)
	assert.Equal(t, "vethA", byIndex.Name)
	_, err = host.LinkByIndex(ctx, 9999)
	assert.ErrorIs(t, err, ErrLinkNotFound)
	assert.False(t, pl.Up, "peer is down until configured")
	require.NoError(t, sb.LinkUp(ctx, pl.Index, false))
	assert.Equal(t, mac, pl.MAC)
	assert.Equal(t, "veth", pl.Kind)

	// Same name again: atomic failure, nothing new.
	err = host.AddVeth(ctx, VethSpec{HostName: "vethA", PeerName: "eth1", PeerNS: sb})
	require.ErrorIs(t, err, unix.EEXIST)
	_, err = sb.LinkByName(ctx, "eth1")
	assert.ErrorIs(t, err, ErrLinkNotFound)

	require.NoError(t, host.DeleteLink(ctx, "vethA"))
	require.NoError(t, host.DeleteLink(ctx, "vethA"), "deleting a missing link is not an error")
	_, err = sb.LinkByName(ctx, "eth0")
	assert.ErrorIs(t, err, ErrLinkNotFound, "deleting one end deletes the pair")
}

func TestAddressesRoutesNeighbours(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	sb := newTestNS(t)
	br, err := host.AddBridge(ctx, BridgeSpec{Name: "br0"})
	require.NoError(t, err)
	require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: "v0", PeerName: "eth0", PeerNS: sb, MasterIndex: br}))
	l, err := sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	require.NoError(t, sb.SetLinkUp(ctx, l.Index))

	a4 := netip.MustParsePrefix("10.1.0.2/24")
	a6 := netip.MustParsePrefix("fd00::2/64")
	require.NoError(t, sb.AddAddress(ctx, l.Index, a4))
	require.NoError(t, sb.AddAddress(ctx, l.Index, a6))
	addrs, err := sb.Addresses(ctx, l.Index)
	require.NoError(t, err)
	assert.Contains(t, addrs, a4)
	assert.Contains(t, addrs, a6)

	def := Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.1"), LinkIndex: l.Index}
	require.NoError(t, sb.AddRoute(ctx, def))
	require.ErrorIs(t, sb.AddRoute(ctx, def), unix.EEXIST)
	def2 := def
	def2.Gateway = netip.MustParseAddr("10.1.0.254")
	require.NoError(t, sb.ReplaceRoute(ctx, def2))
	rs, err := sb.Routes(ctx, 4)
	require.NoError(t, err)
	var defaults []Route
	for _, r := range rs {
		if r.Dst.Bits() == 0 {
			defaults = append(defaults, r)
		}
	}
	require.Equal(t, []Route{def2}, defaults, "replace swaps the one default route")
	require.NoError(t, sb.DeleteRoute(ctx, def2))
	require.NoError(t, sb.DeleteRoute(ctx, def2), "deleting a missing route is not an error")

	n := Neighbour{LinkIndex: l.Index, IP: netip.MustParseAddr("10.1.0.9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}
	require.NoError(t, sb.SetNeighbour(ctx, n))
	ns, err := sb.Neighbours(ctx, l.Index)
	require.NoError(t, err)
	assert.Contains(t, ns, n)
	require.NoError(t, sb.DeleteNeighbour(ctx, n))
	require.NoError(t, sb.DeleteAddress(ctx, l.Index, a4))
	require.NoError(t, sb.DeleteAddress(ctx, l.Index, a4))
}

func TestSysctlIsPerNamespace(t *testing.T) {
	a := newTestNS(t)
	b := newTestNS(t)
	require.NoError(t, a.SetSysctl("net.ipv4.ip_forward", "1"))
	v, err := a.Sysctl("net.ipv4.ip_forward")
	require.NoError(t, err)
	assert.Equal(t, "1", v)
	v, err = b.Sysctl("net.ipv4.ip_forward")
	require.NoError(t, err)
	assert.Equal(t, "0", v)
	_, err = a.Sysctl("kernel.hostname")
	assert.ErrorContains(t, err, "only net.*")
}

func TestMoveLink(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	sb := newTestNS(t)
	other := newTestNS(t)
	// Make a pair whose one end sits in host, the other in other; then move the host end into sb.
	require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: "tap1", PeerName: "x", PeerNS: other}))
	require.NoError(t, host.MoveLink(ctx, "tap1", sb, "eth3"))
	l, err := sb.LinkByName(ctx, "eth3")
	require.NoError(t, err)
	assert.True(t, l.Up)
	_, err = host.LinkByName(ctx, "tap1")
	assert.ErrorIs(t, err, ErrLinkNotFound)

	// A name that is taken in the target fails and leaves the link where it was.
	require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: "tap2", PeerName: "y", PeerNS: other}))
	err = host.MoveLink(ctx, "tap2", sb, "lo")
	require.Error(t, err)
	_, err = host.LinkByName(ctx, "tap2")
	require.NoError(t, err, "failed move puts the link back")
	links, err := sb.Links(ctx)
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	assert.Equal(t, "eth3,lo", strings.Join(sortStrings(names), ","))
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestLinkUpLinkLocal checks that LinkUp decides whether the interface gets
// an IPv6 link-local address.
func TestLinkUpLinkLocal(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	for _, linkLocal := range []bool{false, true} {
		sb := newTestNS(t)
		require.NoError(t, host.AddVeth(ctx, VethSpec{HostName: fmt.Sprintf("ll%v", linkLocal), PeerName: "eth0", PeerNS: sb}))
		hl, err := host.LinkByName(ctx, fmt.Sprintf("ll%v", linkLocal))
		require.NoError(t, err)
		require.NoError(t, host.SetLinkUp(ctx, hl.Index))
		l, err := sb.LinkByName(ctx, "eth0")
		require.NoError(t, err)
		require.NoError(t, sb.LinkUp(ctx, l.Index, linkLocal))
		l, err = sb.LinkByName(ctx, "eth0")
		require.NoError(t, err)
		assert.True(t, l.Up)
		hasLL := func() bool {
			addrs, err := sb.Addresses(ctx, l.Index)
			require.NoError(t, err)
			for _, a := range addrs {
				if a.Addr().IsLinkLocalUnicast() {
					return true
				}
			}
			return false
		}
		if linkLocal {
			assert.Eventually(t, hasLL, 2*time.Second, 10*time.Millisecond, "link-local address expected")
		} else {
			time.Sleep(100 * time.Millisecond)
			assert.False(t, hasLL(), "no link-local address expected")
		}
	}
}
