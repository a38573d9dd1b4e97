package subif

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

var v6Data = &driverapi.IPAMData{Pool: netip.MustParsePrefix("fd01::/64"), Gateway: netip.MustParsePrefix("fd01::1/64")}

// TestCreateNetworkIPv6MTU checks that a network with IPv6 is refused an
// MTU below 1280 before any link is made, that one without IPv6 takes it,
// and that a restore takes a network back as it was made.
func TestCreateNetworkIPv6MTU(t *testing.T) {
	ctx := context.Background()
	host, d := newHost(t)
	before := names(t, host)
	for _, opts := range []map[string]string{
		{optParent: "eth1", parent.OptionMTU: "1279"},
		{optParent: "eth1.7", parent.OptionMTU: "1200"}, // would make a sub-interface
		{parent.OptionMTU: "1279"},                      // would make an internal parent
	} {
		err := d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "n", Name: "n", Options: opts, IPv4: v4("10.1.0.0/24", "10.1.0.1/24"), IPv6: v6Data})
		require.ErrorIs(t, err, driverapi.ErrInvalid, "%v", opts)
		assert.ErrorContains(t, err, "option com.docker.network.driver.mtu="+opts[parent.OptionMTU]+": below 1280, the minimum for a network with IPv6")
		assert.Equal(t, before, names(t, host), "nothing made")
		assert.Empty(t, d.networks)
	}

	v4Only := driverapi.NetworkRequest{ID: "n", Name: "n", Options: map[string]string{optParent: "eth1", parent.OptionMTU: "1279"}, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}
	require.NoError(t, d.CreateNetwork(ctx, v4Only), "IPv4 only: 1279 is fine")
	require.NoError(t, d.DeleteNetwork(ctx, "n"))
	v4Only.IPv6, v4Only.Options[parent.OptionMTU] = v6Data, "1280"
	require.NoError(t, d.CreateNetwork(ctx, v4Only), "IPv6 with 1280")
	require.NoError(t, d.DeleteNetwork(ctx, "n"))
	v4Only.Options[parent.OptionMTU] = "1279"
	require.NoError(t, d.RestoreNetwork(ctx, v4Only), "a restore takes the network back as it is")
	require.NoError(t, d.DeleteNetwork(ctx, "n"))
	assert.Equal(t, before, names(t, host))
}

// subifOptions are the keys the fuzzers pick from, besides any string.
var subifOptions = []string{optParent, optMode, parent.OptionMTU}

// fuzzOptions builds an option map: two keys picked from subifOptions by
// selector bytes, and key3 if not empty.
func fuzzOptions(k1 uint8, v1 string, k2 uint8, v2, key3, v3 string) map[string]string {
	pick := func(k uint8) string { return subifOptions[int(k)%len(subifOptions)] }
	m := map[string]string{pick(k1): v1, pick(k2): v2}
	if key3 != "" {
		m[key3] = v3
	}
	return m
}

// addSeeds adds the known bad cases, and a few good ones, to f's corpus.
func addSeeds(f *testing.F) {
	f.Add(uint8(0), "eth1", uint8(2), "1500", "", "", false, false)
	f.Add(uint8(0), "eth1", uint8(2), "1279", "", "", true, false) // IPv6 needs 1280
	f.Add(uint8(0), "eth1", uint8(2), "1279", "", "", false, false)
	f.Add(uint8(0), "", uint8(2), "1279", "", "", true, false) // internal parent, IPv6
	f.Add(uint8(0), "eth%d", uint8(1), "bridge", "", "", false, false)
	f.Add(uint8(0), "%d", uint8(1), "alone", "", "", false, false)
	f.Add(uint8(0), "eth1\n", uint8(1), "routed", "", "", true, false)
	f.Add(uint8(0), "eth1\xa0", uint8(2), "68", "", "", false, false)
	f.Add(uint8(0), "eth1.7", uint8(2), "1200", "", "", true, false)
	f.Add(uint8(0), "eth1.0", uint8(2), "0", "", "", false, false)
	f.Add(uint8(0), "eth1.4095", uint8(1), "Bridge", "", "", false, false)
	f.Add(uint8(0), "lo", uint8(2), "65536", "", "", false, false)
	f.Add(uint8(0), "eth1", uint8(0), "eth1", "", "", false, true) // internal with a parent
	f.Add(uint8(0), "0123456789abcdef", uint8(2), "-1", "macvlan_mode", "bridge", false, false)
	f.Add(uint8(0), "..", uint8(2), "+1500", "com.docker.network.bridge.name", "br0", false, false)
}

// checkParsed checks a successful parse of m: every key known, every value
// valid and as given.
func checkParsed(t *testing.T, m map[string]string, o Options[osl.MacvlanMode]) {
	t.Helper()
	k := testKind()
	for key, v := range m {
		switch key {
		case optParent:
			require.Equal(t, v, o.Parent)
			if v != "" {
				require.NoError(t, linkrules.CheckIfName(v))
			}
		case optMode:
			require.Equal(t, v, o.Mode.Name)
		case parent.OptionMTU:
			require.NoError(t, linkrules.CheckMTU(o.MTU, false))
			n, err := strconv.Atoi(v)
			require.NoError(t, err)
			require.Equal(t, n, o.MTU)
		default:
			t.Fatalf("unknown key %q accepted", key)
		}
	}
	if _, ok := m[optMode]; !ok {
		require.Equal(t, k.Modes[0].Name, o.Mode.Name, "the default mode")
	}
}

// FuzzParseOptions checks that whatever the option map, ParseOptions either
// fails with an error wrapping ErrInvalid, or returns what the map says,
// every value valid.
func FuzzParseOptions(f *testing.F) {
	addSeeds(f)
	k := testKind()
	f.Fuzz(func(t *testing.T, k1 uint8, v1 string, k2 uint8, v2, key3, v3 string, _, _ bool) {
		m := fuzzOptions(k1, v1, k2, v2, key3, v3)
		o, err := k.ParseOptions(m)
		if err != nil {
			require.ErrorIs(t, err, driverapi.ErrInvalid)
			return
		}
		checkParsed(t, m, o)
	})
}

// FuzzCreateNetwork checks, with real links in a throwaway host namespace
// whose eth1 is a veth end, that whatever the options, a network with IPv4
// and maybe IPv6 is either made with valid options, and deleted without a
// trace, or refused with a sentinel error and nothing left: no link, no
// record.
func FuzzCreateNetwork(f *testing.F) {
	addSeeds(f)
	if os.Geteuid() != 0 {
		f.Skip("needs root: makes network namespaces and links")
	}
	ctx := context.Background()
	newNS := func(name string) *osl.Namespace {
		ns, err := osl.NewNamespace(ctx, filepath.Join(f.TempDir(), name))
		require.NoError(f, err)
		f.Cleanup(func() { assert.NoError(f, ns.Delete()) })
		return ns
	}
	host, wire := newNS("host"), newNS("wire")
	require.NoError(f, host.AddVeth(ctx, osl.VethSpec{HostName: "eth1", PeerName: "w", PeerNS: wire}))
	eth1, err := host.LinkByName(ctx, "eth1")
	require.NoError(f, err)
	require.NoError(f, host.LinkUp(ctx, eth1.Index, false))
	drv, err := New(testKind(), Config{HostNS: host})
	require.NoError(f, err)
	d := drv.(*driver[osl.MacvlanMode])

	f.Fuzz(func(t *testing.T, k1 uint8, v1 string, k2 uint8, v2, key3, v3 string, ipv6, internal bool) {
		before := names(t, host)
		m := fuzzOptions(k1, v1, k2, v2, key3, v3)
		req := driverapi.NetworkRequest{ID: "n", Name: "n", Options: m, Internal: internal, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}
		if ipv6 {
			req.IPv6 = v6Data
		}
		o, parseErr := d.kind.ParseOptions(m)
		err := d.CreateNetwork(ctx, req)
		if err != nil {
			require.Equal(t, before, names(t, host), "a refused network leaves no link")
			require.Empty(t, d.networks, "a refused network leaves no record")
			if parseErr != nil || (ipv6 && o.MTU != 0 && o.MTU < linkrules.MinMTUIPv6) || (internal && o.Parent != "") {
				require.ErrorIs(t, err, driverapi.ErrInvalid)
			} else {
				require.True(t, isSentinel(err), "%v wraps no sentinel", err)
			}
			return
		}
		require.NoError(t, parseErr)
		checkParsed(t, m, o)
		if ipv6 && o.MTU != 0 {
			require.GreaterOrEqual(t, o.MTU, linkrules.MinMTUIPv6)
		}
		require.NoError(t, d.DeleteNetwork(ctx, "n"))
		require.Equal(t, before, names(t, host), "a deleted network leaves no link")
	})
}

// isSentinel reports whether err wraps one of driverapi's sentinels.
func isSentinel(err error) bool {
	for _, s := range []error{driverapi.ErrInvalid, driverapi.ErrNotFound, driverapi.ErrExists, driverapi.ErrInUse, driverapi.ErrNotSupported} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
