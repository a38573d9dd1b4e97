package ipvlan

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// options is what the tests compare of a parse: the parent, the kernel mode,
// whether the mode is routed (l3), and the MTU.
type options struct {
	parent string
	mode   osl.IPvlanMode
	routed bool
	mtu    int
}

func parseOptions(m map[string]string) (options, error) {
	o, err := kind().ParseOptions(m)
	return options{parent: o.Parent, mode: o.Mode.Value, routed: o.Mode.Routed, mtu: o.MTU}, err
}

// TestParseOptions checks ipvlan's options: its modes, their kernel values
// and roles (l3 is routed), and the words of its errors. The options every
// sub-interface driver shares are checked in package subif.
func TestParseOptions(t *testing.T) {
	o, err := parseOptions(nil)
	require.NoError(t, err)
	assert.Equal(t, options{mode: osl.IPvlanL2}, o, "defaults: internal, l2, the parent's MTU")

	for _, tc := range []struct {
		opts map[string]string
		want options
	}{
		{map[string]string{OptionParent: "eth1"}, options{parent: "eth1", mode: osl.IPvlanL2}},
		{map[string]string{OptionParent: "eth1", OptionMode: "l2"}, options{parent: "eth1", mode: osl.IPvlanL2}},
		{map[string]string{OptionParent: "eth1.50", OptionMode: "l3", OptionMTU: "1400"}, options{parent: "eth1.50", mode: osl.IPvlanL3, routed: true, mtu: 1400}},
		{map[string]string{OptionParent: ""}, options{mode: osl.IPvlanL2}},
	} {
		o, err := parseOptions(tc.opts)
		require.NoError(t, err, "%v", tc.opts)
		assert.Equal(t, tc.want, o, "%v", tc.opts)
	}
	for _, m := range kind().Modes {
		assert.False(t, m.Exclusive, "no ipvlan mode has its parent alone: %s", m.Name)
	}

	for _, tc := range []struct {
		opts    map[string]string
		mention string
	}{
		{map[string]string{"macvlan_mode": "bridge"}, `unknown ipvlan driver option "macvlan_mode"`},
		{map[string]string{"ipvlan_flag": "private"}, `unknown ipvlan driver option "ipvlan_flag"`},
		{map[string]string{OptionMode: "l3s"}, `ipvlan_mode="l3s": unknown mode (known: l2, l3)`},
		{map[string]string{OptionMode: "bridge"}, `ipvlan_mode="bridge"`},
		{map[string]string{OptionParent: "a:b"}, `parent="a:b"`},
		{map[string]string{OptionParent: "eth1.0"}, `parent="eth1.0": vlan id 0 out of range 1-4094`},
		{map[string]string{OptionParent: "eth1.4095"}, `vlan id 4095 out of range`},
		{map[string]string{OptionMTU: "0"}, "mtu=0: out of range"},
		{map[string]string{OptionMTU: "1.5k"}, `mtu="1.5k": not a number`},
	} {
		_, err := parseOptions(tc.opts)
		require.ErrorIs(t, err, driverapi.ErrInvalid, "%v", tc.opts)
		assert.ErrorContains(t, err, tc.mention)
	}
}

func TestNewNeedsHost(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "ipvlan driver: HostNS is required")
}
