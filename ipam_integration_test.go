package cnm_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
)

// TestDefaultPoolsAvoidHostNetworks gives the host namespace an interface on
// 172.17.3.0/24 (the first default pool, as a LAN or VPN might): networks
// without a subnet must not collide with it.
func TestDefaultPoolsAvoidHostNetworks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	peer, err := osl.NewNamespace(ctx, t.TempDir()+"/lan")
	require.NoError(t, err)
	defer peer.Delete()
	require.NoError(t, host.NS.AddVeth(ctx, osl.VethSpec{HostName: "lan0", PeerName: "lan0", PeerNS: peer}))
	l, err := host.NS.LinkByName(ctx, "lan0")
	require.NoError(t, err)
	require.NoError(t, host.NS.AddAddress(ctx, l.Index, netip.MustParsePrefix("172.17.3.1/24")))
	require.NoError(t, host.NS.SetLinkUp(ctx, l.Index))

	nw, err := ctrl.NewNetwork(ctx, "bridge", "auto")
	require.NoError(t, err)
	v4, _ := nw.IPv4()
	assert.Equal(t, netip.MustParsePrefix("172.18.0.0/16"), v4.Subnet, "172.17.0.0/16 holds the host's 172.17.3.0/24")

	small, err := ctrl.NewNetwork(ctx, "bridge", "small", cnm.WithIPv4(cnm.IPAMConfig{PrefixLength: 24}))
	require.NoError(t, err)
	v4, _ = small.IPv4()
	assert.Equal(t, netip.MustParsePrefix("172.17.0.0/24"), v4.Subnet, "any /24: the first free one")
	assert.Equal(t, netip.MustParseAddr("172.17.0.1"), v4.Gateway)

	_, err = ctrl.NewNetwork(ctx, "bridge", "bad", cnm.WithIPv4(cnm.IPAMConfig{PrefixLength: 33}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "prefix length 33")
	_, err = ctrl.NewNetwork(ctx, "bridge", "bad", cnm.WithIPv4(cnm.IPAMConfig{PrefixLength: 24, Subnet: netip.MustParsePrefix("10.1.0.0/24")}))
	require.ErrorIs(t, err, cnm.ErrInvalid)

	require.NoError(t, nw.Delete(ctx))
	require.NoError(t, small.Delete(ctx))
	require.NoError(t, host.NS.DeleteLink(ctx, "lan0"))
	cnmtest.AssertNoLeaks(t, host)
}

func TestNullIPAMAndDefaultIPv6Pools(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t,
		cnm.WithDefaultAddressPools(
			ipam.DefaultPool{Base: netip.MustParsePrefix("10.96.0.0/16"), Size: 24},
			ipam.DefaultPool{Base: netip.MustParsePrefix("fd96::/48"), Size: 64},
		))
	// null IPAM: an L2-only bridge network; endpoints get no address.
	l2, err := ctrl.NewNetwork(ctx, "bridge", "l2", cnm.WithIPAMDriver("null", nil))
	require.NoError(t, err)
	_, has := l2.IPv4()
	assert.False(t, has)
	sb, ep := container(t, l2, "a")
	assert.False(t, ep.Info().IPv4.IsValid())
	assert.Equal(t, "eth0", ep.Info().InterfaceName)
	ns, err := osl.OpenNamespace(ctx, sb.Key())
	require.NoError(t, err)
	l, err := ns.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	addrs, err := ns.Addresses(ctx, l.Index)
	ns.Close()
	require.NoError(t, err)
	assert.Empty(t, addrs)
	_, err = l2.CreateEndpoint(ctx, "static", cnm.WithIPv4Address(netip.MustParseAddr("10.0.0.5")))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	_, err = ctrl.NewNetwork(ctx, "bridge", "nope", cnm.WithIPAMDriver("dhcp", nil))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `"dhcp"`)

	// Configured default pools, IPv6 included.
	ds, err := ctrl.NewNetwork(ctx, "bridge", "ds", cnm.WithIPv6(cnm.IPAMConfig{}))
	require.NoError(t, err)
	v4, _ := ds.IPv4()
	v6, _ := ds.IPv6()
	assert.Equal(t, netip.MustParsePrefix("10.96.0.0/24"), v4.Subnet)
	assert.Equal(t, netip.MustParsePrefix("fd96::/64"), v6.Subnet)

	_, err = cnm.New(cnm.WithDefaultAddressPools(ipam.DefaultPool{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 4}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "10.0.0.0/8 size 4")

	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, l2.Delete(ctx))
	require.NoError(t, ds.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}
