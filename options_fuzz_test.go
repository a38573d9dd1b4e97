package cnm_test

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/subif/subiftest"
)

// fuzzDrivers are the drivers FuzzNetworkDriverOptions makes networks of,
// each with the option keys it knows.
var fuzzDrivers = []struct {
	name string
	keys []string
}{
	{"bridge", []string{"com.docker.network.bridge.name", "com.docker.network.bridge.enable_icc", "com.docker.network.bridge.enable_ip_masquerade", "com.docker.network.driver.mtu"}},
	{"macvlan", []string{"parent", "macvlan_mode", "com.docker.network.driver.mtu"}},
	{"ipvlan", []string{"parent", "ipvlan_mode", "com.docker.network.driver.mtu"}},
}

// FuzzNetworkDriverOptions makes networks with any driver options, in a
// throwaway host namespace whose eth1 is plugged into a LAN, and checks
// that a network is either refused with a sentinel error, ErrInvalid when
// an interface name has a '%' or a network with IPv6 has an MTU below 1280,
// and leaves nothing behind, or is made and deleted without a trace. Keys
// are picked from the driver's by selector bytes, key3 is any string.
func FuzzNetworkDriverOptions(f *testing.F) {
	for _, s := range []struct {
		drv            uint8
		k1             uint8
		v1             string
		k2             uint8
		v2, key3, v3   string
		ipv6, internal bool
	}{
		{0, 0, "br-f", 3, "1500", "", "", true, false},
		{0, 0, "br%d", 3, "1500", "", "", false, false},
		{0, 0, "br\n0", 1, "true", "", "", false, false},
		{0, 3, "1279", 0, "br-f", "", "", true, false},
		{0, 3, "1279", 2, "false", "", "", false, true},
		{0, 0, "eth1", 3, "9000", "", "", false, false}, // a link of that name exists
		{1, 0, "eth1", 2, "1500", "", "", true, false},
		{1, 0, "eth%d", 1, "bridge", "", "", false, false},
		{1, 0, "eth1", 2, "1279", "", "", true, false},
		{1, 0, "eth1.7", 2, "1200", "", "", true, false},
		{1, 0, "eth1.7", 1, "passthru", "", "", false, false},
		{1, 0, "", 2, "1279", "", "", true, false},
		{1, 0, "eth1", 1, "vepa", "", "", false, true},
		{2, 0, "eth1", 1, "l3", "", "", true, false},
		{2, 0, "%d", 2, "1280", "", "", true, false},
		{2, 0, "lo", 1, "l2", "com.docker.network.bridge.name", "x", false, false},
	} {
		f.Add(s.drv, s.k1, s.v1, s.k2, s.v2, s.key3, s.v3, s.ipv6, s.internal)
	}
	ctrl, host := cnmtest.NewController(f)
	subiftest.NewLAN(f, host.NS, netip.MustParsePrefix("10.70.0.1/24"), false)
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, drv, k1 uint8, v1 string, k2 uint8, v2, key3, v3 string, ipv6, internal bool) {
		d := fuzzDrivers[int(drv)%len(fuzzDrivers)]
		m := map[string]string{d.keys[int(k1)%len(d.keys)]: v1, d.keys[int(k2)%len(d.keys)]: v2}
		if key3 != "" {
			m[key3] = v3
		}
		opts := []cnm.NetworkOption{
			cnm.WithDriverOptions(m),
			cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.70.0.0/24"), Gateway: netip.MustParseAddr("10.70.0.1")}),
		}
		if ipv6 {
			opts = append(opts, cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd70::/64"), Gateway: netip.MustParseAddr("fd70::1")}))
		}
		if internal {
			opts = append(opts, cnm.WithInternal())
		}
		// Input that must be refused: a '%' in a name (or in the value of a
		// key the driver does not know), an MTU below 1280 with IPv6.
		mtu, _ := strconv.Atoi(m["com.docker.network.driver.mtu"])
		mustRefuse := strings.Contains(m["com.docker.network.bridge.name"], "%") || strings.Contains(m["parent"], "%") ||
			ipv6 && mtu > 0 && mtu < 1280

		nw, err := ctrl.NewNetwork(ctx, d.name, "f", opts...)
		if err == nil {
			require.False(t, mustRefuse, "%s network made with %q, ipv6 %v", d.name, m, ipv6)
			require.NoError(t, nw.Delete(ctx))
		}
		cnmtest.AssertNoLeaks(t, host, "eth1")
		if t.Failed() {
			t.FailNow()
		}
		require.Empty(t, ctrl.Networks())
		if err == nil {
			return
		}
		if mustRefuse {
			require.ErrorIs(t, err, cnm.ErrInvalid)
			return
		}
		require.True(t, isSentinel(err), "%v wraps no sentinel", err)
	})
}

// isSentinel reports whether err wraps one of cnm's sentinel errors.
func isSentinel(err error) bool {
	for _, s := range []error{cnm.ErrInvalid, cnm.ErrNotFound, cnm.ErrExists, cnm.ErrInUse, cnm.ErrNotSupported} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
