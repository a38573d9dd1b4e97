package cnm_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/ipam"
)

func TestNetworkBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	_, err := ctrl.NewNetwork(ctx, "bridge", "taken", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.20.0.0/16")}))
	require.NoError(t, err)

	v4 := func(c cnm.IPAMConfig) cnm.NetworkOption { return cnm.WithIPv4(c) }
	sub := netip.MustParsePrefix("10.30.0.0/24")
	cases := []struct {
		name    string
		driver  string
		netName string
		opts    []cnm.NetworkOption
		is      error
		mention string
	}{
		{"empty name", "bridge", "", nil, cnm.ErrInvalid, "network name is empty"},
		{"long name", "bridge", strings.Repeat("n", 129), nil, cnm.ErrInvalid, "129 characters"},
		{"bad name chars", "bridge", "a/b", nil, cnm.ErrInvalid, `"a/b"`},
		{"duplicate name", "bridge", "taken", nil, cnm.ErrExists, `"taken"`},
		{"unknown driver", "nosuch", "x", nil, cnm.ErrNotFound, `"nosuch"`},
		{"unknown option", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.bogus": "1"})}, cnm.ErrInvalid, "com.docker.network.bridge.bogus"},
		{"bad icc", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.enable_icc": "maybe"})}, cnm.ErrInvalid, `"maybe"`},
		{"mtu too small", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.mtu": "67"})}, cnm.ErrInvalid, "mtu=67"},
		{"mtu too big", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.mtu": "70000"})}, cnm.ErrInvalid, "mtu=70000"},
		{"mtu not a number", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.mtu": "big"})}, cnm.ErrInvalid, `"big"`},
		{"bridge name too long", "bridge", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-0123456789abc"})}, cnm.ErrInvalid, "br-0123456789abc"},
		{"host bits set", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.30.0.1/24")})}, cnm.ErrInvalid, "10.30.0.1/24"},
		{"v6 subnet in WithIPv4", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd00::/64")})}, cnm.ErrInvalid, "fd00::/64"},
		{"v4 subnet in WithIPv6", "bridge", "x", []cnm.NetworkOption{cnm.WithIPv6(cnm.IPAMConfig{Subnet: sub})}, cnm.ErrInvalid, "10.30.0.0/24"},
		{"overlapping subnet", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.20.5.0/24")})}, ipam.ErrOverlap, "10.20.5.0/24"},
		{"gateway outside subnet", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: sub, Gateway: netip.MustParseAddr("10.31.0.1")})}, cnm.ErrInvalid, "gateway 10.31.0.1"},
		{"gateway is network address", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: sub, Gateway: netip.MustParseAddr("10.30.0.0")})}, cnm.ErrInvalid, "network address"},
		{"ip-range outside subnet", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: sub, IPRange: netip.MustParsePrefix("10.30.1.0/28")})}, cnm.ErrInvalid, "ip-range 10.30.1.0/28"},
		{"aux outside subnet", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: sub, AuxAddresses: map[string]netip.Addr{"r": netip.MustParseAddr("10.9.0.1")}})}, cnm.ErrInvalid, "aux address r=10.9.0.1"},
		{"ip-range without subnet", "bridge", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{IPRange: netip.MustParsePrefix("10.30.0.0/28")})}, cnm.ErrInvalid, "need a subnet"},
		{"unknown ipam driver", "bridge", "x", []cnm.NetworkOption{cnm.WithIPAMDriver("dhcp", nil)}, cnm.ErrInvalid, `"dhcp"`},
		{"ipam driver options", "bridge", "x", []cnm.NetworkOption{cnm.WithIPAMDriver("default", map[string]string{"k": "v"})}, cnm.ErrInvalid, `"k"`},
		{"null with addressing", "null", "x", []cnm.NetworkOption{v4(cnm.IPAMConfig{Subnet: sub})}, cnm.ErrInvalid, "no addressing"},
		{"null with options", "null", "x", []cnm.NetworkOption{cnm.WithDriverOptions(map[string]string{"a": "b"})}, cnm.ErrInvalid, `"a"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ctrl.NewNetwork(ctx, tc.driver, tc.netName, tc.opts...)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
		})
	}
	require.Len(t, ctrl.Networks(), 1, "no failed network is recorded")

	// The names and subnets of failed creations are free again.
	_, err = ctrl.NewNetwork(ctx, "bridge", "x", v4(cnm.IPAMConfig{Subnet: sub}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-x"}))
	require.NoError(t, err)

	// A second network may not take a bridge name in use, nor a link that exists.
	_, err = ctrl.NewNetwork(ctx, "bridge", "y", cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-x"}))
	require.ErrorIs(t, err, cnm.ErrExists)
	assert.ErrorContains(t, err, "br-x")
	_, err = ctrl.NewNetwork(ctx, "bridge", "y", cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "lo"}))
	require.ErrorIs(t, err, cnm.ErrExists)
	assert.ErrorContains(t, err, `"lo"`)

	for _, n := range ctrl.Networks() {
		require.NoError(t, n.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host)
}

func TestEndpointAndJoinBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.40.0.0/29")}))
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "ep", cnm.WithIPv4Address(netip.MustParseAddr("10.40.0.5")))
	require.NoError(t, err)

	cases := []struct {
		name    string
		epName  string
		opts    []cnm.EndpointOption
		is      error
		mention string
	}{
		{"empty name", "", nil, cnm.ErrInvalid, "endpoint name is empty"},
		{"long name", strings.Repeat("e", 200), nil, cnm.ErrInvalid, "200 characters"},
		{"duplicate name", "ep", nil, cnm.ErrExists, `"ep"`},
		{"address outside subnet", "x", []cnm.EndpointOption{cnm.WithIPv4Address(netip.MustParseAddr("10.41.0.2"))}, cnm.ErrInvalid, "10.41.0.2"},
		{"address taken", "x", []cnm.EndpointOption{cnm.WithIPv4Address(netip.MustParseAddr("10.40.0.5"))}, cnm.ErrExists, "10.40.0.5"},
		{"gateway taken", "x", []cnm.EndpointOption{cnm.WithIPv4Address(netip.MustParseAddr("10.40.0.1"))}, cnm.ErrExists, "10.40.0.1"},
		{"v6 address without v6", "x", []cnm.EndpointOption{cnm.WithIPv6Address(netip.MustParseAddr("fd00::5"))}, cnm.ErrInvalid, "fd00::5"},
		{"v6 in WithIPv4Address", "x", []cnm.EndpointOption{cnm.WithIPv4Address(netip.MustParseAddr("fd00::5"))}, cnm.ErrInvalid, "fd00::5"},
		{"multicast mac", "x", []cnm.EndpointOption{cnm.WithMACAddress(net.HardwareAddr{1, 0, 0, 0, 0, 1})}, cnm.ErrInvalid, "01:00:00:00:00:01"},
		{"bad alias", "x", []cnm.EndpointOption{cnm.WithAliases("a b")}, cnm.ErrInvalid, `"a b"`},
		{"bad port proto", "x", []cnm.EndpointOption{cnm.WithPortMappings(cnm.PortMapping{Proto: "icmp", ContainerPort: 1})}, cnm.ErrInvalid, `"icmp"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nw.CreateEndpoint(ctx, tc.epName, tc.opts...)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
		})
	}
	require.Len(t, nw.Endpoints(), 1)

	// The /29 has 5 usable addresses after the gateway: .2 .3 .4 .6 are left.
	var eps []*cnm.Endpoint
	for i := range 4 {
		e, err := nw.CreateEndpoint(ctx, "fill"+string(rune('a'+i)))
		require.NoError(t, err)
		eps = append(eps, e)
	}
	_, err = nw.CreateEndpoint(ctx, "one-too-many")
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	assert.ErrorContains(t, err, "10.40.0.0/29")

	// Joins.
	sb, err := ctrl.NewSandbox(ctx, "sb")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	err = ep.Join(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrExists, "joining the same endpoint twice")
	err = eps[0].Join(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrExists, "a second endpoint of one network in one sandbox")
	assert.ErrorContains(t, err, `network "n"`)
	err = ep.Delete(ctx)
	require.ErrorIs(t, err, cnm.ErrInUse, "deleting a joined endpoint")
	err = nw.Delete(ctx)
	require.ErrorIs(t, err, cnm.ErrInUse, "deleting a network with endpoints")
	assert.ErrorContains(t, err, "5 endpoints")

	sb2, err := ctrl.NewSandbox(ctx, "sb2")
	require.NoError(t, err)
	require.NoError(t, sb2.Delete(ctx))
	err = eps[0].Join(ctx, sb2)
	require.ErrorIs(t, err, cnm.ErrNotFound, "join to a deleted sandbox")
	assert.ErrorContains(t, err, `"sb2"`)
	err = sb2.Delete(ctx)
	require.ErrorIs(t, err, cnm.ErrNotFound)
	err = eps[0].Leave(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrNotFound, "leaving a sandbox it is not joined to")

	_, err = ctrl.NewSandbox(ctx, "sb")
	require.ErrorIs(t, err, cnm.ErrExists, "container IDs are unique")
	_, err = ctrl.NewSandbox(ctx, "")
	require.ErrorIs(t, err, cnm.ErrInvalid)
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithHostname("-bad"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `"-bad"`)
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithNetnsPath("relative/path"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithNetnsPath("/nonexistent/netns"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "/nonexistent/netns")
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithHostsPath("/nonexistent/dir/hosts"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `hosts path "/nonexistent/dir/hosts"`)
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithResolvConfPath("/nonexistent/dir/resolv.conf"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	_, err = ctrl.NewSandbox(ctx, "h", cnm.WithHostNetwork(), cnm.WithNetnsPath("/proc/self/ns/net"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	none, err := ctrl.NewNetwork(ctx, "null", "none")
	require.NoError(t, err)
	_, err = none.CreateEndpoint(ctx, "m", cnm.WithMACAddress(net.HardwareAddr{2, 0, 0, 0, 0, 1}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `null network "none"`)
	_, err = none.CreateEndpoint(ctx, "m", cnm.WithIPv4Address(netip.MustParseAddr("10.40.0.4")))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	require.NoError(t, none.Delete(ctx))

	require.NoError(t, sb.Delete(ctx))
	for _, e := range eps {
		require.NoError(t, e.Delete(ctx))
	}
	err = ep.Delete(ctx)
	require.ErrorIs(t, err, cnm.ErrNotFound, "sandbox delete deleted its endpoints")
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestControllerBadInput(t *testing.T) {
	t.Parallel()
	_, err := cnm.New(cnm.WithDataDir("relative"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `"relative"`)
	_, err = cnm.New(cnm.WithHostNamespace("/nonexistent/ns"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "/nonexistent/ns")
}
