package osl

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestAddVXLAN checks that a VXLAN device is born inside the target
// namespace, up, with its settings (IPv4 and IPv6 local addresses) as
// Link.VXLAN lists them back, that nothing of it appears in the underlay's
// namespace, and that refused requests leave nothing.
func TestAddVXLAN(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	ul := lowerFixture(t, host)
	require.NoError(t, host.SetLinkUp(ctx, ul.Index))
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00:ca::1")
	require.NoError(t, host.AddAddress(ctx, ul.Index, netip.PrefixFrom(v4, 24)))
	require.NoError(t, host.AddAddress(ctx, ul.Index, netip.PrefixFrom(v6, 64)))
	before := linkNames(t, host)

	for _, tc := range []struct {
		name  string
		spec  VXLANSpec
		wantP uint16
	}{
		{"ipv4", VXLANSpec{Name: "vxlan0", VNI: 4097, Local: v4, Port: 4789, MTU: 1450, Proxy: true}, 4789},
		{"ipv6 learning default port", VXLANSpec{Name: "vxlan0", VNI: 4098, Local: v6, MTU: 1430, Learning: true}, 8472},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := newTestNS(t)
			spec := tc.spec
			spec.NS = sb
			require.NoError(t, host.AddVXLAN(ctx, spec))
			l, err := sb.LinkByName(ctx, spec.Name)
			require.NoError(t, err)
			assert.Equal(t, "vxlan", l.Kind)
			assert.True(t, l.Up)
			assert.Equal(t, spec.MTU, l.MTU)
			require.NotNil(t, l.VXLAN)
			assert.Equal(t, VXLANSpec{VNI: spec.VNI, Local: spec.Local, Port: tc.wantP, Learning: spec.Learning, Proxy: spec.Proxy}, *l.VXLAN)
			assert.Equal(t, before, linkNames(t, host), "nothing in the underlay's namespace")

			// The same VNI, local address and port again: the kernel's
			// EEXIST, and nothing made.
			other := newTestNS(t)
			again := spec
			again.NS, again.Name = other, "vxlan1"
			again.Port = tc.wantP
			assert.ErrorIs(t, host.AddVXLAN(ctx, again), unix.EEXIST)
			// The name taken in the target.
			taken := spec
			taken.VNI++
			assert.ErrorIs(t, host.AddVXLAN(ctx, taken), unix.EEXIST)
			assert.Equal(t, []string{"lo"}, linkNames(t, other))
			assert.Equal(t, []string{"lo", "vxlan0"}, linkNames(t, sb))
		})
	}

	t.Run("port of a bridge in the target", func(t *testing.T) {
		sb := newTestNS(t)
		// A bridge in the underlay's namespace too: the index is the
		// target's (in the underlay's it names another link).
		_, err := host.AddBridge(ctx, BridgeSpec{Name: "hbr"})
		require.NoError(t, err)
		br, err := sb.AddBridge(ctx, BridgeSpec{Name: "br0"})
		require.NoError(t, err)
		require.NoError(t, host.AddVXLAN(ctx, VXLANSpec{Name: "vxlan0", VNI: 4099, Local: v4, Port: 4790, NS: sb, MasterIndex: br}))
		l, err := sb.LinkByName(ctx, "vxlan0")
		require.NoError(t, err)
		assert.Equal(t, br, l.MasterIndex)
		require.NoError(t, host.DeleteLink(ctx, "hbr"))
	})

	t.Run("bad spec", func(t *testing.T) {
		sb := newTestNS(t)
		for _, spec := range []VXLANSpec{
			{Name: "vx", VNI: 0, Local: v4, NS: sb},
			{Name: "vx", VNI: 1 << 24, Local: v4, NS: sb},
			{Name: "vx", VNI: 5, NS: sb},
		} {
			assert.Error(t, host.AddVXLAN(ctx, spec), "%+v", spec)
		}
		assert.Equal(t, []string{"lo"}, linkNames(t, sb))
	})

	t.Run("not vxlan", func(t *testing.T) {
		assert.Nil(t, ul.VXLAN, "a veth has no VXLAN settings")
	})
}

// TestFDB: a static FDB entry of a VXLAN device is set, listed with its
// VTEP and deleted; deleting it again, or after its device is gone, is no
// error.
func TestFDB(t *testing.T) {
	ctx := context.Background()
	host := newTestNS(t)
	ul := lowerFixture(t, host)
	require.NoError(t, host.SetLinkUp(ctx, ul.Index))
	local := netip.MustParseAddr("192.0.2.1")
	require.NoError(t, host.AddAddress(ctx, ul.Index, netip.PrefixFrom(local, 24)))
	sb := newTestNS(t)
	require.NoError(t, host.AddVXLAN(ctx, VXLANSpec{Name: "vxlan0", VNI: 4100, Local: local, NS: sb}))
	vx, err := sb.LinkByName(ctx, "vxlan0")
	require.NoError(t, err)

	e := FDBEntry{LinkIndex: vx.Index, MAC: net.HardwareAddr{0x02, 0x42, 0x0a, 0, 0, 9}, VTEP: netip.MustParseAddr("192.0.2.2")}
	require.NoError(t, sb.SetFDB(ctx, e))
	got, err := sb.FDB(ctx, vx.Index)
	require.NoError(t, err)
	assert.Equal(t, []FDBEntry{e}, got)
	require.NoError(t, sb.DeleteFDB(ctx, e))
	got, err = sb.FDB(ctx, vx.Index)
	require.NoError(t, err)
	assert.Empty(t, got)
	assert.NoError(t, sb.DeleteFDB(ctx, e), "an entry that is not there")
	require.NoError(t, sb.DeleteLink(ctx, "vxlan0"))
	assert.NoError(t, sb.DeleteFDB(ctx, e), "a device that is gone")
}
