package bridge

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
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
		// The kernel would name the bridge br0, br1, ...: unmarked, never found again.
		{map[string]string{OptionBridgeName: "br%d"}, `bridge.name="br%d": contains '%'`},
		{map[string]string{OptionBridgeName: "br\n0"}, `bridge.name="br\n0": contains byte 0x0a`},
		{map[string]string{OptionICC: "yes"}, `enable_icc="yes"`},
		{map[string]string{OptionMasquerade: "2"}, `enable_ip_masquerade="2"`},
		{map[string]string{OptionMTU: "0"}, "mtu=0: out of range"},
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

// TestCheckIPv6 checks the MTU rule that only a network with IPv6 has.
func TestCheckIPv6(t *testing.T) {
	require.NoError(t, options{}.checkIPv6(), "the default MTU")
	require.NoError(t, options{mtu: 1280}.checkIPv6())
	o, err := parseOptions(map[string]string{OptionMTU: "1279"})
	require.NoError(t, err, "fine without IPv6")
	err = o.checkIPv6()
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "option com.docker.network.driver.mtu=1279: below 1280")
}

func TestNewNeedsHostAndFirewall(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
}

func TestHostIfNamesAreFreshAndValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := linkrules.VethName()
		require.NoError(t, linkrules.CheckIfName(n))
		require.Len(t, n, 11)
		seen[n] = true
	}
	assert.Greater(t, len(seen), 990)
}

// namesAKey reports whether err names one of m's keys, quoted or as key=.
func namesAKey(err error, m map[string]string) bool {
	for k := range m {
		if strings.Contains(err.Error(), strconv.Quote(k)) || strings.Contains(err.Error(), k+"=") {
			return true
		}
	}
	return false
}

// knownOptions are the keys FuzzParseOptions picks from, besides any string.
var knownOptions = []string{OptionBridgeName, OptionICC, OptionMasquerade, OptionMTU}

// FuzzParseOptions checks that whatever the option map, parseOptions either
// fails with an error wrapping ErrInvalid that names a key, or
// returns exactly what the map says, every value valid. Each key is one of
// knownOptions picked by a selector byte, or the free string key3.
func FuzzParseOptions(f *testing.F) {
	f.Add(uint8(0), "br-x", uint8(3), "1500", "", "")
	f.Add(uint8(0), "br%d", uint8(1), "true", "", "")         // a pattern: the kernel names it br0
	f.Add(uint8(0), "%", uint8(9), "", "x", "y")              // an empty boolean, an unknown key
	f.Add(uint8(0), "br\n0", uint8(2), "false", "", "")       // a control character
	f.Add(uint8(0), "eth\xa0", uint8(3), "65535", "", "")     // the kernel's white space
	f.Add(uint8(0), "0123456789abcdef", uint8(3), "", "", "") // 16 bytes
	f.Add(uint8(3), "0", uint8(3), "0", "", "")
	f.Add(uint8(3), "-1", uint8(1), "yes", "", "")
	f.Add(uint8(3), "1279", uint8(0), "..", "", "")
	f.Add(uint8(3), "+1500", uint8(0), "a:b", "", "")
	f.Add(uint8(3), "99999999999999999999", uint8(0), "a/b", "", "")
	f.Fuzz(func(t *testing.T, k1 uint8, v1 string, k2 uint8, v2 string, key3, v3 string) {
		pick := func(k uint8) string { return knownOptions[int(k)%len(knownOptions)] }
		m := map[string]string{pick(k1): v1, pick(k2): v2}
		if key3 != "" {
			m[key3] = v3
		}
		o, err := parseOptions(m)
		if err != nil {
			require.ErrorIs(t, err, driverapi.ErrInvalid)
			require.True(t, namesAKey(err, m), "%v does not name a key of %q", err, m)
			return
		}
		for k, v := range m {
			switch k {
			case OptionBridgeName:
				require.NoError(t, linkrules.CheckIfName(o.bridgeName))
				require.Equal(t, v, o.bridgeName)
			case OptionICC, OptionMasquerade:
				b, err := strconv.ParseBool(v)
				require.NoError(t, err)
				require.Equal(t, b, map[string]bool{OptionICC: o.icc, OptionMasquerade: o.masquerade}[k])
			case OptionMTU:
				require.NoError(t, linkrules.CheckMTU(o.mtu, false))
				n, _ := strconv.Atoi(v)
				require.Equal(t, n, o.mtu)
				if err := o.checkIPv6(); err != nil {
					require.ErrorIs(t, err, driverapi.ErrInvalid)
					require.Less(t, o.mtu, linkrules.MinMTUIPv6)
				}
			default:
				t.Fatalf("unknown key %q accepted", k)
			}
		}
		_, hasName := m[OptionBridgeName]
		require.Equal(t, hasName, o.bridgeName != "", "a bridge name only when given")
		_, hasMTU := m[OptionMTU]
		require.Equal(t, hasMTU, o.mtu != 0, "an MTU only when given")
	})
}
