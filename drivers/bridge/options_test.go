package bridge

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
)

func TestParseOptions(t *testing.T) {
	o, err := parseOptions(nil)
	require.NoError(t, err)
	assert.Equal(t, options{icc: true, masquerade: true}, o, "defaults")

	o, err = parseOptions(map[string]string{
		OptionBridgeName: "br-x", OptionICC: "false", OptionMasquerade: "0", OptionMTU: "9000",
	})
	require.NoError(t, err)
	assert.Equal(t, options{bridgeName: "br-x", icc: false, masquerade: false, mtu: 9000}, o)

	bad := []struct {
		opts    map[string]string
		mention string
	}{
		{map[string]string{"com.docker.network.bridge.host_binding_ipv4": "0.0.0.0"}, "host_binding_ipv4"},
		{map[string]string{OptionBridgeName: ""}, "empty"},
		{map[string]string{OptionBridgeName: "0123456789abcdef"}, "longer than 15"},
		{map[string]string{OptionBridgeName: "a/b"}, `"a/b"`},
		{map[string]string{OptionBridgeName: ".."}, `".."`},
		{map[string]string{OptionICC: "yes"}, `enable_icc="yes"`},
		{map[string]string{OptionMasquerade: "2"}, `enable_ip_masquerade="2"`},
		{map[string]string{OptionMTU: "67"}, "mtu=67"},
		{map[string]string{OptionMTU: "65536"}, "mtu=65536"},
		{map[string]string{OptionMTU: "1e3"}, `"1e3"`},
	}
	for _, tc := range bad {
		_, err := parseOptions(tc.opts)
		require.ErrorIs(t, err, driverapi.ErrInvalid, "%v", tc.opts)
		assert.ErrorContains(t, err, tc.mention)
	}
	// Several bad keys: the error names the same one every time.
	m := map[string]string{"zz": "1", "aa": "1", "mm": "1"}
	for range 10 {
		_, err := parseOptions(m)
		assert.ErrorContains(t, err, `"aa"`)
	}
}

func TestNewNeedsHostAndFirewall(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
}

func TestHostIfNamesAreFreshAndValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := hostIfName()
		require.NoError(t, validIfName(n))
		require.Len(t, n, 11)
		seen[n] = true
	}
	assert.Greater(t, len(seen), 990)
}
