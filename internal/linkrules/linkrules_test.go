package linkrules

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/seed53641549/cnm/errdefs"
)

func TestCheckIfName(t *testing.T) {
	for _, tc := range []struct {
		name, want string // want: "" if valid, else a part of the reason
	}{
		{"eth0", ""},
		{"br-0123456789ab", ""}, // 15 bytes
		{"a", ""},
		{"eth1.50", ""},
		{"v-_=+~!@#$^&*()", ""},
		{"", "empty"},
		{"br-0123456789abc", "longer than 15 bytes"},
		{".", "not a valid interface name"},
		{"..", "not a valid interface name"},
		{"...", ""},
		{"a/b", `contains '/'`},
		{"a:b", `contains ':'`},
		{"br%d", `contains '%'`},
		{"%", `contains '%'`},
		{"a b", "byte 0x20"},
		{"a\tb", "byte 0x09"},
		{"a\nb", "byte 0x0a"},
		{"a\x00b", "byte 0x00"},
		{"a\x7fb", "byte 0x7f"},
		{"a\xa0b", "byte 0xa0"}, // the kernel's isspace takes it as white space
		{"ethé", "byte 0xc3"},
	} {
		err := CheckIfName(tc.name)
		if tc.want == "" {
			assert.NoError(t, err, "%q", tc.name)
			continue
		}
		assert.ErrorIs(t, err, errdefs.ErrInvalid, "%q", tc.name)
		assert.ErrorContains(t, err, tc.want, "%q", tc.name)
	}
}

func TestCheckMAC(t *testing.T) {
	for _, tc := range []struct {
		mac  net.HardwareAddr
		want string
	}{
		{net.HardwareAddr{2, 0, 0, 0, 0, 1}, ""},
		{net.HardwareAddr{0, 0x16, 0x3e, 0, 0, 0}, ""}, // universally administered
		{net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff}, ""},
		{nil, "0 bytes long"},
		{net.HardwareAddr{2, 0, 0, 0, 1}, "5 bytes long"},
		{net.HardwareAddr{2, 0, 0, 0, 0, 0, 0, 1}, "8 bytes long"},
		{net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, "multicast"},
		{net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "multicast"}, // broadcast
		{net.HardwareAddr{0, 0, 0, 0, 0, 0}, "all zero"},
	} {
		err := CheckMAC(tc.mac)
		if tc.want == "" {
			assert.NoError(t, err, "%s", tc.mac)
			continue
		}
		assert.ErrorIs(t, err, errdefs.ErrInvalid, "%s", tc.mac)
		assert.ErrorContains(t, err, tc.want, "%s", tc.mac)
	}
}

func TestCheckMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu  int
		ipv6 bool
		want string
	}{
		{68, false, ""},
		{1279, false, ""},
		{1280, true, ""},
		{1500, true, ""},
		{65535, true, ""},
		{0, false, "out of range 68-65535"},
		{-1, false, "out of range"},
		{67, false, "out of range"},
		{67, true, "out of range"},
		{65536, false, "out of range"},
		{1279, true, "below 1280, the minimum for a network with IPv6"},
		{68, true, "below 1280"},
	} {
		err := CheckMTU(tc.mtu, tc.ipv6)
		if tc.want == "" {
			assert.NoError(t, err, "%d ipv6=%v", tc.mtu, tc.ipv6)
			continue
		}
		assert.ErrorIs(t, err, errdefs.ErrInvalid, "%d ipv6=%v", tc.mtu, tc.ipv6)
		assert.ErrorContains(t, err, tc.want, "%d ipv6=%v", tc.mtu, tc.ipv6)
	}
}

// TestReasonOnly checks that an error is the reason alone, for callers to
// prefix with the field and the value, and is not ErrInvalid itself.
func TestReasonOnly(t *testing.T) {
	err := CheckIfName("br%d")
	assert.Equal(t, "contains '%'", err.Error())
	assert.False(t, strings.Contains(err.Error(), errdefs.ErrInvalid.Error()))
	assert.False(t, errors.Is(err, errdefs.ErrNotFound))
}
