package subif

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

// TestParseOptions checks the options every Kind shares (parent, MTU, the
// refusal of unknown keys) and the lookup of its modes; each driver checks
// its own modes.
func TestParseOptions(t *testing.T) {
	k := testKind()
	bridge, alone := k.Modes[0], k.Modes[1]
	o, err := k.ParseOptions(nil)
	require.NoError(t, err)
	assert.Equal(t, Options[osl.MacvlanMode]{Mode: bridge}, o, "defaults: internal, the first mode, the parent's MTU")

	for _, tc := range []struct {
		opts map[string]string
		want Options[osl.MacvlanMode]
	}{
		{map[string]string{optParent: "eth1"}, Options[osl.MacvlanMode]{Parent: "eth1", Mode: bridge}},
		{map[string]string{optParent: ""}, Options[osl.MacvlanMode]{Mode: bridge}},
		{map[string]string{optParent: "eth1.50", optMode: "alone", parent.OptionMTU: "1400"}, Options[osl.MacvlanMode]{Parent: "eth1.50", Mode: alone, MTU: 1400}},
		{map[string]string{optParent: "eth1", optMode: "bridge"}, Options[osl.MacvlanMode]{Parent: "eth1", Mode: bridge}},
	} {
		o, err := k.ParseOptions(tc.opts)
		require.NoError(t, err, "%v", tc.opts)
		assert.Equal(t, tc.want, o, "%v", tc.opts)
	}

	for _, tc := range []struct {
		opts    map[string]string
		mention string
	}{
		{map[string]string{"macvlan_mode": "bridge"}, `unknown testvlan driver option "macvlan_mode" (known: parent, testvlan_mode, com.docker.network.driver.mtu)`},
		{map[string]string{"com.docker.network.bridge.name": "x"}, `"com.docker.network.bridge.name"`},
		{map[string]string{optMode: "source"}, `testvlan_mode="source": unknown mode (known: bridge, alone, routed)`},
		{map[string]string{optMode: "Bridge"}, `testvlan_mode="Bridge"`},
		{map[string]string{optParent: "0123456789abcdef"}, `parent="0123456789abcdef": longer than 15`},
		{map[string]string{optParent: "a:b"}, `parent="a:b"`},
		// The kernel reads '%' as a pattern: no link is named so, and one
		// made with it would get a name of the kernel's choosing.
		{map[string]string{optParent: "eth%d"}, `parent="eth%d": contains '%'`},
		{map[string]string{optParent: "eth1\n"}, `parent="eth1\n": contains byte 0x0a`},
		{map[string]string{optParent: "eth1 "}, `parent="eth1 ": contains byte 0x20`},
		{map[string]string{optParent: "eth1.0"}, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{map[string]string{optParent: "eth1.4095"}, `parent="eth1.4095": vlan id 4095 out of range 1-4094`},
		{map[string]string{parent.OptionMTU: "0"}, "mtu=0: out of range"},
		{map[string]string{parent.OptionMTU: "67"}, "mtu=67: out of range"},
		{map[string]string{parent.OptionMTU: "65536"}, "mtu=65536"},
		{map[string]string{parent.OptionMTU: "big"}, `mtu="big": not a number`},
		{map[string]string{parent.OptionMTU: "1.5k"}, `mtu="1.5k": not a number`},
	} {
		_, err := k.ParseOptions(tc.opts)
		require.ErrorIs(t, err, driverapi.ErrInvalid, "%v", tc.opts)
		assert.ErrorContains(t, err, tc.mention)
	}
	// Several bad keys: the error names the same one every time.
	m := map[string]string{"zz": "1", "aa": "1", "mm": "1"}
	for range 10 {
		_, err := k.ParseOptions(m)
		assert.ErrorContains(t, err, `"aa"`)
	}
}

// TestCheckAddressing checks that a network with a way out needs a gateway
// inside each of its subnets, and one without (internal, or routed) does not.
func TestCheckAddressing(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	v4 := &driverapi.IPAMData{Pool: p("192.168.50.0/24"), Gateway: p("192.168.50.254/24")}
	v6 := &driverapi.IPAMData{Pool: p("fd50::/64"), Gateway: p("fd50::1/64")}
	noGW := &driverapi.IPAMData{Pool: p("192.168.50.0/24")}
	outside := &driverapi.IPAMData{Pool: p("192.168.50.0/24"), Gateway: p("192.168.51.1/24")}
	const who = "a testvlan network with a parent"

	subnets, gw4, gw6, err := checkAddressing(driverapi.NetworkRequest{Name: "lan", IPv4: v4, IPv6: v6}, false, who)
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{p("192.168.50.0/24"), p("fd50::/64")}, subnets)
	assert.Equal(t, a("192.168.50.254"), gw4)
	assert.Equal(t, a("fd50::1"), gw6)

	_, _, _, err = checkAddressing(driverapi.NetworkRequest{Name: "lan", IPv4: noGW}, false, who)
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "network lan: subnet 192.168.50.0/24 has no gateway: a testvlan network with a parent needs the address of the physical network's router")
	_, _, _, err = checkAddressing(driverapi.NetworkRequest{Name: "lan", IPv4: noGW}, true, who)
	require.NoError(t, err, "a network without a way out needs no gateway")
	_, _, _, err = checkAddressing(driverapi.NetworkRequest{Name: "lan", IPv4: outside}, false, who)
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "gateway 192.168.51.1 is outside subnet 192.168.50.0/24")
}

func TestInternalName(t *testing.T) {
	k := testKind()
	n := k.internalName("0123456789abcdef-0123")
	assert.Equal(t, "tvi-0123456789a", n)
	assert.LessOrEqual(t, len(n), osl.MaxNameLen)
	assert.Equal(t, "tvi-x", k.internalName("x"))
}

// TestJoinResponse checks what a Join reports in each mode: the router as
// gateway, in a routed mode a default route through the interface per
// family, and on internal networks nothing.
func TestJoinResponse(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	k := testKind()
	bridge, routed := Options[osl.MacvlanMode]{Mode: k.Modes[0]}, Options[osl.MacvlanMode]{Mode: k.Modes[2]}
	for _, tc := range []struct {
		name string
		n    *network[osl.MacvlanMode]
		want driverapi.JoinResponse
	}{
		{"gateway", &network[osl.MacvlanMode]{opts: bridge, gw4: a("10.0.0.1"), v4: true},
			driverapi.JoinResponse{Gateway: a("10.0.0.1")}},
		{"routed dual stack", &network[osl.MacvlanMode]{opts: routed, v4: true, v6: true},
			driverapi.JoinResponse{StaticRoutes: []driverapi.StaticRoute{{Destination: p("0.0.0.0/0")}, {Destination: p("::/0")}}}},
		{"routed internal", &network[osl.MacvlanMode]{opts: routed, internal: true, v4: true}, driverapi.JoinResponse{}},
		{"internal", &network[osl.MacvlanMode]{opts: bridge, internal: true, v4: true}, driverapi.JoinResponse{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.n.joinResponse())
		})
	}
}
