// Package subiftest has the test fixtures of the macvlan and ipvlan drivers'
// tests: a throwaway "physical" network for a host namespace, and a listing
// of a namespace's links. Like the tests, it makes kernel objects only in
// namespaces it makes itself or is given.
package subiftest

import (
	"context"
	"net/netip"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/osl"
)

// NewLAN plugs the namespace host into a new upstream namespace, which it
// returns and deletes when the test ends: host's eth1, up, is one end of a
// veth pair whose other end, up0, is a port of bridge sw0 upstream, and sw0
// carries router (the router's address and the LAN's prefix length). With
// hairpin the switch port sends frames back the way they came (what
// macvlan's VEPA mode needs to reach a neighbour on the same parent).
func NewLAN(t testing.TB, host *osl.Namespace, router netip.Prefix, hairpin bool) *osl.Namespace {
	t.Helper()
	ctx := context.Background()
	up, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "upstream"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, up.Delete()) })
	sw, err := up.AddBridge(ctx, osl.BridgeSpec{Name: "sw0"})
	require.NoError(t, err)
	require.NoError(t, up.AddAddress(ctx, sw, router))
	require.NoError(t, up.LinkUp(ctx, sw, false))
	require.NoError(t, up.AddVeth(ctx, osl.VethSpec{HostName: "up0", PeerName: "eth1", PeerNS: host, MasterIndex: sw}))
	if hairpin {
		require.NoError(t, up.SetBridgePortHairpin(ctx, "up0", true))
	}
	eth1, err := host.LinkByName(ctx, "eth1")
	require.NoError(t, err)
	require.NoError(t, host.LinkUp(ctx, eth1.Index, false))
	return up
}

// LinkNames lists the links of the namespace file path as "name/kind"
// ("eth0/macvlan"), sorted.
func LinkNames(t testing.TB, path string) []string {
	t.Helper()
	ctx := context.Background()
	ns, err := osl.OpenNamespace(ctx, path)
	require.NoError(t, err)
	defer ns.Close()
	links, err := ns.Links(ctx)
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		out = append(out, l.Name+"/"+l.Kind)
	}
	sort.Strings(out)
	return out
}
