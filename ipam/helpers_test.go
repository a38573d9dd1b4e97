package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/ipam"
)

func addr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// newAllocator returns an allocator with the given default pools, or Docker's
// when none is given.
func newAllocator(t testing.TB, defaults ...ipam.DefaultPool) *ipam.LocalAllocator {
	t.Helper()
	a, err := ipam.New(ipam.Config{DefaultPools: defaults})
	require.NoError(t, err)
	return a
}

// subnetPool reserves subnet (and rng, when not empty) and returns the pool.
func subnetPool(t testing.TB, a *ipam.LocalAllocator, subnet, rng string) ipam.Pool {
	t.Helper()
	req := ipam.PoolRequest{Subnet: prefix(subnet), V6: prefix(subnet).Addr().Is6()}
	if rng != "" {
		req.IPRange = prefix(rng)
	}
	p, err := a.RequestPool(t.Context(), req)
	require.NoError(t, err)
	return p
}

// next allocates the next dynamic address of the pool.
func next(t testing.TB, a *ipam.LocalAllocator, poolID string) netip.Addr {
	t.Helper()
	got, err := a.RequestAddress(t.Context(), poolID, ipam.AddressRequest{})
	require.NoError(t, err)
	return got
}

// prefer allocates exactly want in the pool.
func prefer(t testing.TB, a *ipam.LocalAllocator, poolID, want string) {
	t.Helper()
	got, err := a.RequestAddress(t.Context(), poolID, ipam.AddressRequest{Preferred: addr(want)})
	require.NoError(t, err)
	require.Equal(t, addr(want), got)
}

// release frees addr in the pool.
func release(t testing.TB, a *ipam.LocalAllocator, poolID, s string) {
	t.Helper()
	require.NoError(t, a.ReleaseAddress(t.Context(), poolID, addr(s)))
}

// subnets returns the subnets of a's pools, in the order of Pools.
func subnets(a *ipam.LocalAllocator) []string {
	var out []string
	for _, p := range a.Pools() {
		out = append(out, p.Subnet.String())
	}
	return out
}
