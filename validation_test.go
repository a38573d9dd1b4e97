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
		{"alias label too long", "x", []cnm.EndpointOption{cnm.WithAliases(strings.Repeat("a", 64))}, cnm.ErrInvalid, "1 to 63"},
		{"alias empty label", "x", []cnm.EndpointOption{cnm.WithAliases("a..b")}, cnm.ErrInvalid, `"a..b"`},
		{"bad service name", "x", []cnm.EndpointOption{cnm.WithService("a b")}, cnm.ErrInvalid, `service name "a b"`},
		{"service name too long", "x", []cnm.EndpointOption{cnm.WithService(strings.Repeat("s", 64))}, cnm.ErrInvalid, "1 to 63"},
		{"empty service name", "x", []cnm.EndpointOption{cnm.WithService("")}, cnm.ErrInvalid, "service name"},
		{"endpoint name label too long", strings.Repeat("e", 64), nil, cnm.ErrInvalid, "1 to 63"},
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

// TestBadInputRefusedEarly checks the refusals of issue 9: input that
// reached a file or the kernel before, now refused by the option or the
// driver's option parsing, with ErrInvalid and a message naming the field
// and the value (quoted, so a line break in it stays on one line), and
// nothing left behind.
func TestBadInputRefusedEarly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.50.0.0/24")}))
	require.NoError(t, err)
	a := netip.MustParseAddr
	v6 := cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd50::/64")})
	sandbox := func(opts ...cnm.SandboxOption) func() error {
		return func() error { _, err := ctrl.NewSandbox(ctx, "c", opts...); return err }
	}
	endpoint := func(opts ...cnm.EndpointOption) func() error {
		return func() error { _, err := nw.CreateEndpoint(ctx, "e", opts...); return err }
	}
	network := func(driver string, opts ...cnm.NetworkOption) func() error {
		return func() error { _, err := ctrl.NewNetwork(ctx, driver, "x", opts...); return err }
	}
	driverOpts := func(kv ...string) cnm.NetworkOption {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return cnm.WithDriverOptions(m)
	}

	for _, tc := range []struct {
		name    string
		do      func() error
		mention string
	}{
		// Sandbox files: a zone is any string, and reaches the file as is.
		{"extra host address with a zone", sandbox(cnm.WithExtraHosts(cnm.ExtraHost{Name: "registry", IP: a("fe80::1%x\n6.6.6.6 registry")})),
			`extra host "registry" address "fe80::1%x\n6.6.6.6 registry": has an IPv6 zone`},
		{"extra host address with a plain zone", sandbox(cnm.WithExtraHosts(cnm.ExtraHost{Name: "r", IP: a("fe80::1%eth0")})),
			`extra host "r" address "fe80::1%eth0"`},
		{"dns server with a zone", sandbox(cnm.WithDNS(a("10.0.0.53"), a("fe80::1%x\nnameserver 6.6.6.6"))),
			`dns server "fe80::1%x\nnameserver 6.6.6.6": has an IPv6 zone`},
		{"hostname with a line break", sandbox(cnm.WithHostname("web\n6.6.6.6 evil")), `hostname "web\n6.6.6.6 evil"`},
		{"hostname with a NUL", sandbox(cnm.WithHostname("web\x00")), `hostname "web\x00"`},
		{"hostname with DEL", sandbox(cnm.WithHostname("web\x7f")), `hostname "web\x7f"`},
		{"domain name with a line break", sandbox(cnm.WithDomainname("example.com\nsearch evil")), `domainname "example.com\nsearch evil"`},
		{"extra host name with a tab", sandbox(cnm.WithExtraHosts(cnm.ExtraHost{Name: "a\tb", IP: a("10.0.0.1")})), `extra host name "a\tb"`},
		{"extra host name with a line break", sandbox(cnm.WithExtraHosts(cnm.ExtraHost{Name: "a\n10.0.0.2 b", IP: a("10.0.0.1")})), `extra host name "a\n10.0.0.2 b"`},
		{"extra host name with a comment", sandbox(cnm.WithExtraHosts(cnm.ExtraHost{Name: "a#b", IP: a("10.0.0.1")})), `extra host name "a#b"`},
		{"alias with a line break", endpoint(cnm.WithAliases("db\nevil")), `alias "db\nevil"`},
		{"alias with a control character", endpoint(cnm.WithAliases("db\x1b")), `alias "db\x1b"`},

		// Endpoint addresses, at CreateEndpoint rather than at Join.
		{"all-zero mac", endpoint(cnm.WithMACAddress(net.HardwareAddr{0, 0, 0, 0, 0, 0})), `mac address "00:00:00:00:00:00": all zero`},
		{"multicast mac", endpoint(cnm.WithMACAddress(net.HardwareAddr{1, 0, 0x5e, 0, 0, 1})), `mac address "01:00:5e:00:00:01": a multicast address`},
		{"broadcast mac", endpoint(cnm.WithMACAddress(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})), `mac address "ff:ff:ff:ff:ff:ff"`},
		{"short mac", endpoint(cnm.WithMACAddress(net.HardwareAddr{2, 0, 0, 0, 1})), `mac address "02:00:00:00:01": 5 bytes long`},
		{"ipv6 address with a zone", endpoint(cnm.WithIPv6Address(a("fd50::5%eth0"))), `ipv6 address "fd50::5%eth0": has an IPv6 zone`},
		{"mapped ipv6 address with a zone", endpoint(cnm.WithIPv6Address(a("::ffff:10.50.0.5%x\ny"))), `ipv6 address "::ffff:10.50.0.5%x\ny": has an IPv6 zone`},
		{"ipv6 address in WithIPv4Address", endpoint(cnm.WithIPv4Address(a("fe80::1%x\ny"))), `ipv4 address "fe80::1%x\ny" is not an IPv4 address`},
		{"gateway with a zone", network("bridge", cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fe80::/64"), Gateway: a("fe80::1%eth0")})),
			`ipv6 gateway "fe80::1%eth0": has an IPv6 zone`},

		// Interface names: the kernel expands '%' (br%d -> br0), and the bridge
		// it made would carry a name cnm never asked for.
		{"bridge name with %", network("bridge", driverOpts("com.docker.network.bridge.name", "br%d")), `com.docker.network.bridge.name="br%d": contains '%'`},
		{"bridge name with a line break", network("bridge", driverOpts("com.docker.network.bridge.name", "br\n0")), `com.docker.network.bridge.name="br\n0": contains byte 0x0a`},
		{"macvlan parent with %", network("macvlan", driverOpts("parent", "eth%d")), `parent="eth%d": contains '%'`},
		{"ipvlan parent with %", network("ipvlan", driverOpts("parent", "%d")), `parent="%d": contains '%'`},
		{"macvlan parent with a space", network("macvlan", driverOpts("parent", "eth 1")), `parent="eth 1": contains byte 0x20`},

		// MTU: IPv6 needs 1280; the kernel turns IPv6 off on a link below it.
		{"macvlan mtu below 1280 with ipv6", network("macvlan", v6, driverOpts("com.docker.network.driver.mtu", "1279")),
			"com.docker.network.driver.mtu=1279: below 1280, the minimum for a network with IPv6"},
		{"bridge mtu below 1280 with ipv6", network("bridge", v6, driverOpts("com.docker.network.driver.mtu", "1279")),
			"com.docker.network.driver.mtu=1279: below 1280, the minimum for a network with IPv6"},
		{"ipvlan mtu below 1280 with ipv6", network("ipvlan", v6, driverOpts("com.docker.network.driver.mtu", "1000")),
			"com.docker.network.driver.mtu=1000: below 1280"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			require.ErrorIs(t, err, cnm.ErrInvalid)
			assert.ErrorContains(t, err, tc.mention)
			assert.NotContains(t, err.Error(), "\n", "the value is quoted")
		})
	}
	assert.Empty(t, ctrl.Sandboxes())
	assert.Empty(t, nw.Endpoints())
	assert.Len(t, ctrl.Networks(), 1)
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}
