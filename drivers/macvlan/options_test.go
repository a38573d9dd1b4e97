package macvlan

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// options is what the tests compare of a parse: the parent, the kernel mode
// and the MTU.
type options struct {
	parent string
	mode   osl.MacvlanMode
	mtu    int
}

func parseOptions(m map[string]string) (options, error) {
	o, err := kind().ParseOptions(m)
	return options{parent: o.Parent, mode: o.Mode.Value, mtu: o.MTU}, err
}

// TestParseOptions checks macvlan's options: its modes and their kernel
// values, and the words of its errors. The options every sub-interface
// driver shares are checked in package subif.
func TestParseOptions(t *testing.T) {
	o, err := parseOptions(nil)
	require.NoError(t, err)
	assert.Equal(t, options{mode: osl.MacvlanBridge}, o, "defaults: internal, bridge mode, the parent's MTU")

	for _, tc := range []struct {
		opts map[string]string
		want options
	}{
		{map[string]string{OptionParent: "eth1"}, options{parent: "eth1", mode: osl.MacvlanBridge}},
		{map[string]string{OptionParent: ""}, options{mode: osl.MacvlanBridge}},
		{map[string]string{OptionParent: "eth1.50", OptionMode: "private", OptionMTU: "1400"}, options{parent: "eth1.50", mode: osl.MacvlanPrivate, mtu: 1400}},
		{map[string]string{OptionParent: "eth1", OptionMode: "vepa"}, options{parent: "eth1", mode: osl.MacvlanVEPA}},
		{map[string]string{OptionParent: "eth1", OptionMode: "passthru"}, options{parent: "eth1", mode: osl.MacvlanPassthru}},
		{map[string]string{OptionParent: "eth1", OptionMode: "bridge"}, options{parent: "eth1", mode: osl.MacvlanBridge}},
	} {
		o, err := parseOptions(tc.opts)
		require.NoError(t, err, "%v", tc.opts)
		assert.Equal(t, tc.want, o, "%v", tc.opts)
	}

	for _, tc := range []struct {
		opts    map[string]string
		mention string
	}{
		{map[string]string{"ipvlan_mode": "l2"}, `unknown macvlan driver option "ipvlan_mode"`},
		{map[string]string{"com.docker.network.bridge.name": "x"}, `"com.docker.network.bridge.name"`},
		{map[string]string{OptionMode: "source"}, `macvlan_mode="source": unknown mode (known: bridge, private, vepa, passthru)`},
		{map[string]string{OptionMode: "Bridge"}, `macvlan_mode="Bridge"`},
		{map[string]string{OptionParent: "0123456789abcdef"}, `parent="0123456789abcdef": longer than 15`},
		{map[string]string{OptionParent: "eth1.0"}, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{map[string]string{OptionParent: "eth1.4095"}, `parent="eth1.4095": vlan id 4095 out of range 1-4094`},
		{map[string]string{OptionMTU: "67"}, "mtu=67: out of range"},
		{map[string]string{OptionMTU: "65536"}, "mtu=65536"},
		{map[string]string{OptionMTU: "big"}, `mtu="big": not a number`},
	} {
		_, err := parseOptions(tc.opts)
		require.ErrorIs(t, err, driverapi.ErrInvalid, "%v", tc.opts)
		assert.ErrorContains(t, err, tc.mention)
	}
}

// TestModes checks the macvlan modes' roles: passthru alone has its parent
// alone, and no mode is routed (a macvlan network always has a gateway).
func TestModes(t *testing.T) {
	for _, m := range kind().Modes {
		assert.Equal(t, m.Value == osl.MacvlanPassthru, m.Exclusive, m.Name)
		assert.False(t, m.Routed, m.Name)
	}
}

func TestNewNeedsHost(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "macvlan driver: HostNS is required")
}
