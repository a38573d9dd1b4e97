package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

func TestAddressSpaces(t *testing.T) {
	local, global := newAllocator(t).AddressSpaces()
	assert.Equal(t, ipam.LocalSpace, local)
	assert.Equal(t, ipam.GlobalSpace, global)
	assert.Equal(t, "local", local)
	assert.Equal(t, "global", global)
}

func TestSentinels(t *testing.T) {
	assert.ErrorIs(t, ipam.ErrOverlap, errdefs.ErrExists)
	assert.NotErrorIs(t, ipam.ErrOverlap, errdefs.ErrInvalid)
	assert.NotErrorIs(t, ipam.ErrOverlap, ipam.ErrPoolExhausted)
	for _, sentinel := range []error{errdefs.ErrInvalid, errdefs.ErrNotFound, errdefs.ErrExists, errdefs.ErrInUse, ipam.ErrOverlap} {
		assert.NotErrorIs(t, ipam.ErrPoolExhausted, sentinel)
	}
}

func TestRequestPool(t *testing.T) {
	a := newAllocator(t)
	p, err := a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: prefix("10.1.0.0/24")})
	require.NoError(t, err)
	assert.Equal(t, prefix("10.1.0.0/24"), p.Subnet)
	assert.False(t, p.IPRange.IsValid())
	assert.NotEmpty(t, p.ID)

	q, err := a.RequestPool(t.Context(), ipam.PoolRequest{
		AddressSpace: ipam.LocalSpace, Subnet: prefix("fd00:1::/64"), IPRange: prefix("fd00:1::/80"), V6: true,
	})
	require.NoError(t, err)
	assert.Equal(t, prefix("fd00:1::/64"), q.Subnet)
	assert.Equal(t, prefix("fd00:1::/80"), q.IPRange)
	assert.NotEqual(t, p.ID, q.ID)

	assert.Equal(t, []ipam.Pool{p, q}, a.Pools())
}

func TestRequestPoolErrors(t *testing.T) {
	v4 := func(subnet, rng string) ipam.PoolRequest {
		req := ipam.PoolRequest{}
		if subnet != "" {
			req.Subnet = prefix(subnet)
		}
		if rng != "" {
			req.IPRange = prefix(rng)
		}
		return req
	}
	v6 := func(subnet, rng string) ipam.PoolRequest {
		req := v4(subnet, rng)
		req.V6 = true
		return req
	}
	badBits := func(s string, bits int) netip.Prefix { return netip.PrefixFrom(addr(s), bits) }

	for _, tc := range []struct {
		name string
		req  ipam.PoolRequest
		is   error
		msg  string
	}{
		{"global space", ipam.PoolRequest{AddressSpace: ipam.GlobalSpace, Subnet: prefix("10.9.0.0/24")},
			errdefs.ErrInvalid, `address space "global" is not served by this allocator`},
		{"unknown space", ipam.PoolRequest{AddressSpace: "LocalDefault"},
			errdefs.ErrInvalid, `address space "LocalDefault" is unknown`},
		{"invalid subnet", ipam.PoolRequest{Subnet: badBits("10.9.0.0", 33)},
			errdefs.ErrInvalid, "subnet invalid Prefix is not a valid prefix"},
		{"subnet host bits", v4("10.9.0.1/24", ""),
			errdefs.ErrInvalid, "subnet 10.9.0.1/24 has host bits set"},
		{"IPv6 subnet host bits", v6("fd00:9::1/64", ""),
			errdefs.ErrInvalid, "subnet fd00:9::1/64 has host bits set"},
		{"mapped subnet", v6("::ffff:10.9.0.0/120", ""),
			errdefs.ErrInvalid, "subnet ::ffff:10.9.0.0/120 is an IPv4-mapped IPv6 prefix"},
		{"IPv4 subnet with v6", v6("10.9.0.0/24", ""),
			errdefs.ErrInvalid, "subnet 10.9.0.0/24 is IPv4 but v6 is true"},
		{"IPv6 subnet without v6", v4("fd00:9::/64", ""),
			errdefs.ErrInvalid, "subnet fd00:9::/64 is IPv6 but v6 is false"},
		{"ip-range without subnet", v4("", "10.9.0.0/28"),
			errdefs.ErrInvalid, "ip-range 10.9.0.0/28 is set without a subnet"},
		{"invalid ip-range", ipam.PoolRequest{Subnet: prefix("10.9.0.0/24"), IPRange: badBits("10.9.0.0", -1)},
			errdefs.ErrInvalid, "ip-range invalid Prefix is not a valid prefix"},
		{"ip-range host bits", v4("10.9.0.0/24", "10.9.0.1/28"),
			errdefs.ErrInvalid, "ip-range 10.9.0.1/28 has host bits set"},
		{"ip-range family", v4("10.9.0.0/24", "fd00:9::/120"),
			errdefs.ErrInvalid, "ip-range fd00:9::/120 is IPv6 but subnet 10.9.0.0/24 is IPv4"},
		{"ip-range mapped", v4("10.9.0.0/24", "::ffff:10.9.0.0/124"),
			errdefs.ErrInvalid, "ip-range ::ffff:10.9.0.0/124 is an IPv4-mapped IPv6 prefix"},
		{"ip-range outside", v4("10.9.0.0/24", "10.9.1.0/28"),
			errdefs.ErrInvalid, "ip-range 10.9.1.0/28 is outside subnet 10.9.0.0/24"},
		{"ip-range larger than subnet", v4("10.9.0.0/24", "10.9.0.0/23"),
			errdefs.ErrInvalid, "ip-range 10.9.0.0/23 is outside subnet 10.9.0.0/24"},
		{"ip-range only network address", v4("10.9.0.0/24", "10.9.0.0/32"),
			errdefs.ErrInvalid, "ip-range 10.9.0.0/32 holds no usable address of subnet 10.9.0.0/24"},
		{"ip-range only broadcast address", v4("10.9.0.0/24", "10.9.0.255/32"),
			errdefs.ErrInvalid, "ip-range 10.9.0.255/32 holds no usable address of subnet 10.9.0.0/24"},
		{"ip-range only anycast address", v6("fd00:9::/64", "fd00:9::/128"),
			errdefs.ErrInvalid, "ip-range fd00:9::/128 holds no usable address of subnet fd00:9::/64"},
		{"ip-range IPv6 outside", v6("fd00:9::/64", "fd00:8::/120"),
			errdefs.ErrInvalid, "ip-range fd00:8::/120 is outside subnet fd00:9::/64"},
		{"same subnet", v4("10.0.0.0/24", ""),
			ipam.ErrOverlap, `subnet 10.0.0.0/24 overlaps pool 10.0.0.0/24 in address space "local"`},
		{"larger subnet", v4("10.0.0.0/16", ""),
			ipam.ErrOverlap, "subnet 10.0.0.0/16 overlaps pool 10.0.0.0/24"},
		{"smaller subnet", v4("10.0.0.128/25", "10.0.0.128/26"),
			ipam.ErrOverlap, "subnet 10.0.0.128/25 overlaps pool 10.0.0.0/24"},
		{"single address", v4("10.0.0.7/32", ""),
			ipam.ErrOverlap, "subnet 10.0.0.7/32 overlaps pool 10.0.0.0/24"},
		{"IPv6 overlap", v6("fd00::/16", ""),
			ipam.ErrOverlap, "subnet fd00::/16 overlaps pool fd00:0:0:1::/64"},
		{"no IPv6 default pool", ipam.PoolRequest{V6: true},
			ipam.ErrPoolExhausted, "no IPv6 default pool is configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAllocator(t)
			subnetPool(t, a, "10.0.0.0/24", "")
			subnetPool(t, a, "fd00:0:0:1::/64", "")
			before := a.Pools()

			p, err := a.RequestPool(t.Context(), tc.req)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
			assert.Equal(t, ipam.Pool{}, p)
			assert.Equal(t, before, a.Pools(), "a failed request changes nothing")
			if tc.is == ipam.ErrOverlap {
				assert.ErrorIs(t, err, errdefs.ErrExists)
				assert.NotErrorIs(t, err, errdefs.ErrInvalid)
			}
		})
	}
}

func TestOverlapIsPerLiveAllocator(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/16", "")
	subnetPool(t, a, "10.1.0.0/16", "")      // adjacent: no overlap
	subnetPool(t, a, "a00::/8", "")          // same leading bits, other family
	subnetPool(t, a, "9.255.255.255/32", "") // adjacent below
	require.NoError(t, a.ReleasePool(t.Context(), p.ID))
	subnetPool(t, a, "10.0.128.0/17", "") // free again after release

	b := newAllocator(t) // another allocator holds nothing of a's
	subnetPool(t, b, "10.0.0.0/8", "")
}

func TestPoolIDs(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	got := next(t, a, p.ID)
	require.NoError(t, a.ReleasePool(t.Context(), p.ID))

	// The same subnet again gets a new ID; the stale one stays unknown.
	q := subnetPool(t, a, "10.0.0.0/24", "")
	assert.NotEqual(t, p.ID, q.ID)
	_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, p.ID)
	require.ErrorIs(t, a.ReleaseAddress(t.Context(), p.ID, got), errdefs.ErrNotFound)

	// The new pool starts empty: the old pool's address is free.
	prefer(t, a, q.ID, got.String())
}

func TestReleasePool(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	keep := subnetPool(t, a, "10.0.1.0/24", "")
	next(t, a, p.ID)
	prefer(t, a, p.ID, "10.0.0.200")

	// Allowed with addresses still allocated: they go with the pool.
	require.NoError(t, a.ReleasePool(t.Context(), p.ID))
	assert.Equal(t, []ipam.Pool{keep}, a.Pools())

	err := a.ReleasePool(t.Context(), p.ID)
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, fmt.Sprintf("pool %q", p.ID))
	_, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, errdefs.ErrNotFound)

	err = a.ReleasePool(t.Context(), "no-such-pool")
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, `"no-such-pool"`)
	assert.Equal(t, []ipam.Pool{keep}, a.Pools())
}

func TestPoolsSorted(t *testing.T) {
	a := newAllocator(t)
	for _, s := range []string{"fd00::/64", "192.168.1.0/24", "10.1.0.0/24", "10.0.0.0/16", "::/64"} {
		subnetPool(t, a, s, "")
	}
	r := subnetPool(t, a, "10.2.0.0/24", "10.2.0.128/25")
	assert.Equal(t, []string{"10.0.0.0/16", "10.1.0.0/24", "10.2.0.0/24", "192.168.1.0/24", "::/64", "fd00::/64"}, subnets(a))
	assert.Contains(t, a.Pools(), r)
}

// TestDynamicSequence allocates a pool's dynamic addresses until exhaustion:
// the usable addresses, in order, and exactly those.
func TestDynamicSequence(t *testing.T) {
	for _, tc := range []struct {
		subnet, rng string
		want        []string
	}{
		{"10.0.0.0/29", "", []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"10.0.0.0/30", "", []string{"10.0.0.1", "10.0.0.2"}},
		{"10.0.0.0/31", "", []string{"10.0.0.0", "10.0.0.1"}},
		{"10.0.0.5/32", "", []string{"10.0.0.5"}},
		{"255.255.255.254/31", "", []string{"255.255.255.254", "255.255.255.255"}},
		{"0.0.0.0/30", "", []string{"0.0.0.1", "0.0.0.2"}},
		{"10.0.0.0/29", "10.0.0.0/29", []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"10.0.0.0/24", "10.0.0.0/30", []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
		{"10.0.0.0/24", "10.0.0.252/30", []string{"10.0.0.252", "10.0.0.253", "10.0.0.254"}},
		{"10.0.0.0/24", "10.0.0.4/30", []string{"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"}},
		{"10.0.0.0/24", "10.0.0.9/32", []string{"10.0.0.9"}},
		{"10.0.0.0/24", "10.0.0.0/31", []string{"10.0.0.1"}},
		{"10.0.0.0/31", "10.0.0.1/32", []string{"10.0.0.1"}},
		{"fd00::/125", "", []string{"fd00::1", "fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"}},
		{"fd00::/126", "", []string{"fd00::1", "fd00::2", "fd00::3"}},
		{"fd00::/127", "", []string{"fd00::", "fd00::1"}},
		{"fd00::5/128", "", []string{"fd00::5"}},
		{"fd00::/64", "fd00::/126", []string{"fd00::1", "fd00::2", "fd00::3"}},
		{"fd00::/64", "fd00::8/126", []string{"fd00::8", "fd00::9", "fd00::a", "fd00::b"}},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126", "", []string{
			"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		}},
	} {
		t.Run(tc.subnet+" "+tc.rng, func(t *testing.T) {
			a := newAllocator(t)
			p := subnetPool(t, a, tc.subnet, tc.rng)
			var got []string
			for range tc.want {
				got = append(got, next(t, a, p.ID).String())
			}
			assert.Equal(t, tc.want, got)

			_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
			require.ErrorIs(t, err, ipam.ErrPoolExhausted)
			assert.ErrorContains(t, err, "no free address in pool "+tc.subnet)
			if tc.rng != "" {
				assert.ErrorContains(t, err, "ip-range "+tc.rng)
			}

			// Releasing any one address makes exactly that one available.
			last := tc.want[len(tc.want)/2]
			release(t, a, p.ID, last)
			assert.Equal(t, last, next(t, a, p.ID).String())
			_, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
			require.ErrorIs(t, err, ipam.ErrPoolExhausted)
		})
	}
}

func TestExhaustSlash29(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "192.0.2.0/29", "")
	for i := 1; i <= 6; i++ {
		assert.Equal(t, addr(fmt.Sprintf("192.0.2.%d", i)), next(t, a, p.ID))
	}
	for range 3 { // stays exhausted, and the failures change nothing
		got, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
		require.ErrorIs(t, err, ipam.ErrPoolExhausted)
		assert.EqualError(t, err, "pool exhausted: no free address in pool 192.0.2.0/29")
		assert.False(t, got.IsValid())
	}
	release(t, a, p.ID, "192.0.2.4")
	assert.Equal(t, addr("192.0.2.4"), next(t, a, p.ID))
}

func TestExhaustWithPreferred(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/29", "")
	for i := 1; i <= 6; i++ {
		prefer(t, a, p.ID, fmt.Sprintf("10.0.0.%d", i))
	}
	_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	release(t, a, p.ID, "10.0.0.3")
	assert.Equal(t, addr("10.0.0.3"), next(t, a, p.ID))
}

func TestIPRangeAndPreferredOutsideIt(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "10.0.0.0/30")

	// A gateway and an aux address outside the range: allowed, and they
	// do not use up the range.
	prefer(t, a, p.ID, "10.0.0.254")
	prefer(t, a, p.ID, "10.0.0.100")
	// A preferred address inside the range counts against it.
	prefer(t, a, p.ID, "10.0.0.2")

	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID))
	assert.Equal(t, addr("10.0.0.3"), next(t, a, p.ID))
	_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	assert.ErrorContains(t, err, "no free address in pool 10.0.0.0/24 (ip-range 10.0.0.0/30)")

	// Freeing an address outside the range frees nothing inside it.
	release(t, a, p.ID, "10.0.0.100")
	_, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	release(t, a, p.ID, "10.0.0.2")
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID))
}

func TestPreferredAddress(t *testing.T) {
	for _, tc := range []struct {
		subnet, preferred string
		is                error  // nil: allowed
		msg               string // for an error
	}{
		{"10.0.0.0/24", "10.0.0.1", nil, ""},
		{"10.0.0.0/24", "10.0.0.254", nil, ""},
		{"10.0.0.0/24", "10.0.0.0", errdefs.ErrInvalid, "address 10.0.0.0 is the network address of subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "10.0.0.255", errdefs.ErrInvalid, "address 10.0.0.255 is the broadcast address of subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "10.0.1.1", errdefs.ErrInvalid, "address 10.0.1.1 is outside subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "9.255.255.255", errdefs.ErrInvalid, "address 9.255.255.255 is outside subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "::ffff:10.0.0.1", errdefs.ErrInvalid, "address ::ffff:10.0.0.1 is outside subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "fd00::1", errdefs.ErrInvalid, "address fd00::1 is outside subnet 10.0.0.0/24"},
		{"10.0.0.0/24", "10.0.0.5", errdefs.ErrExists, "address 10.0.0.5 is already allocated in pool 10.0.0.0/24"},
		{"10.0.0.0/8", "10.255.255.254", nil, ""},
		{"10.0.0.0/8", "10.255.255.255", errdefs.ErrInvalid, "address 10.255.255.255 is the broadcast address of subnet 10.0.0.0/8"},
		{"0.0.0.0/0", "255.255.255.255", errdefs.ErrInvalid, "address 255.255.255.255 is the broadcast address of subnet 0.0.0.0/0"},
		{"10.0.0.0/31", "10.0.0.0", nil, ""},
		{"10.0.0.0/31", "10.0.0.1", nil, ""},
		{"10.0.0.0/31", "10.0.0.2", errdefs.ErrInvalid, "address 10.0.0.2 is outside subnet 10.0.0.0/31"},
		{"10.0.0.7/32", "10.0.0.7", nil, ""},
		{"10.0.0.7/32", "10.0.0.6", errdefs.ErrInvalid, "address 10.0.0.6 is outside subnet 10.0.0.7/32"},
		{"fd00::/64", "fd00::1", nil, ""},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff", nil, ""}, // no broadcast in IPv6
		{"fd00::/64", "fd00::", errdefs.ErrInvalid, "address fd00:: is the subnet-router anycast address of subnet fd00::/64"},
		{"fd00::/64", "fd00:0:0:1::1", errdefs.ErrInvalid, "address fd00:0:0:1::1 is outside subnet fd00::/64"},
		{"fd00::/64", "fe80::1%eth0", errdefs.ErrInvalid, "address fe80::1%eth0 is outside subnet fd00::/64"},
		{"fd00::/64", "10.0.0.1", errdefs.ErrInvalid, "address 10.0.0.1 is outside subnet fd00::/64"},
		{"fd00::/64", "fd00::5", errdefs.ErrExists, "address fd00::5 is already allocated in pool fd00::/64"},
		{"fd00::/127", "fd00::", nil, ""},
		{"fd00::/127", "fd00::1", nil, ""},
		{"fd00::7/128", "fd00::7", nil, ""},
		{"::/0", "::1", nil, ""},
		{"::/0", "::", errdefs.ErrInvalid, "address :: is the subnet-router anycast address of subnet ::/0"},
	} {
		t.Run(tc.subnet+" "+tc.preferred, func(t *testing.T) {
			a := newAllocator(t)
			p := subnetPool(t, a, tc.subnet, "")
			held := "10.0.0.5"
			if p.Subnet.Addr().Is6() {
				held = "fd00::5"
			}
			if p.Subnet.Contains(addr(held)) {
				prefer(t, a, p.ID, held)
			}

			got, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr(tc.preferred)})
			if tc.is == nil {
				require.NoError(t, err)
				assert.Equal(t, addr(tc.preferred), got)
				// Now it is taken.
				_, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr(tc.preferred)})
				require.ErrorIs(t, err, errdefs.ErrExists)
				assert.ErrorContains(t, err, "address "+tc.preferred+" is already allocated in pool "+tc.subnet)
				return
			}
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
			assert.False(t, got.IsValid())
			if tc.is == errdefs.ErrInvalid && addr(tc.preferred).Zone() == "" && p.Subnet.Contains(addr(tc.preferred)) {
				// A reserved address is not allocated by the failure either.
				require.ErrorIs(t, a.ReleaseAddress(t.Context(), p.ID, addr(tc.preferred)), errdefs.ErrNotFound)
			}
		})
	}
}

func TestPreferredFailureChangesNothing(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/29", "")
	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID))
	for _, bad := range []string{"10.0.0.0", "10.0.0.7", "10.0.0.8", "10.0.0.1"} {
		_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr(bad)})
		require.Error(t, err, bad)
	}
	for i := 2; i <= 6; i++ {
		assert.Equal(t, addr(fmt.Sprintf("10.0.0.%d", i)), next(t, a, p.ID))
	}
	_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
}

func TestNextFit(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/29", "")
	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID))
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID))
	assert.Equal(t, addr("10.0.0.3"), next(t, a, p.ID))

	// A just-released address is not reused at once.
	release(t, a, p.ID, "10.0.0.2")
	assert.Equal(t, addr("10.0.0.4"), next(t, a, p.ID))
	assert.Equal(t, addr("10.0.0.5"), next(t, a, p.ID))
	assert.Equal(t, addr("10.0.0.6"), next(t, a, p.ID))
	// The end of the range: wrap around, past the network address.
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID))

	release(t, a, p.ID, "10.0.0.1")
	release(t, a, p.ID, "10.0.0.5")
	assert.Equal(t, addr("10.0.0.5"), next(t, a, p.ID)) // after .2: .3 and .4 are taken
	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID)) // wraps past .6, .7 and .0
}

func TestNextFitIgnoresPreferredAndReleases(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID))
	prefer(t, a, p.ID, "10.0.0.3")
	prefer(t, a, p.ID, "10.0.0.200")
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID)) // preferred did not move the cursor
	assert.Equal(t, addr("10.0.0.4"), next(t, a, p.ID)) // skips the preferred .3
	release(t, a, p.ID, "10.0.0.4")
	release(t, a, p.ID, "10.0.0.1")
	assert.Equal(t, addr("10.0.0.5"), next(t, a, p.ID)) // releases did not move it back
}

func TestNextFitWrapsInRange(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "10.0.0.16/30")
	for _, want := range []string{"10.0.0.16", "10.0.0.17", "10.0.0.18", "10.0.0.19"} {
		assert.Equal(t, addr(want), next(t, a, p.ID))
	}
	release(t, a, p.ID, "10.0.0.18")
	release(t, a, p.ID, "10.0.0.16")
	assert.Equal(t, addr("10.0.0.16"), next(t, a, p.ID)) // wraps to the range's start, not the subnet's
	assert.Equal(t, addr("10.0.0.18"), next(t, a, p.ID))
}

func TestNoImmediateReuseIPv6(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "fd00::/64", "")
	first := next(t, a, p.ID)
	assert.Equal(t, addr("fd00::1"), first)
	release(t, a, p.ID, first.String())
	for i := 2; i < 100; i++ {
		got := next(t, a, p.ID)
		assert.Equal(t, netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i)}), got)
		release(t, a, p.ID, got.String())
	}
}

func TestLargePools(t *testing.T) {
	for _, tc := range []struct{ subnet, first, second string }{
		{"10.0.0.0/8", "10.0.0.1", "10.0.0.2"},
		{"0.0.0.0/0", "0.0.0.1", "0.0.0.2"},
		{"fd00::/64", "fd00::1", "fd00::2"},
		{"2001:db8::/32", "2001:db8::1", "2001:db8::2"},
		{"::/0", "::1", "::2"},
	} {
		t.Run(tc.subnet, func(t *testing.T) {
			a := newAllocator(t)
			p := subnetPool(t, a, tc.subnet, "")
			assert.Equal(t, addr(tc.first), next(t, a, p.ID))
			assert.Equal(t, addr(tc.second), next(t, a, p.ID))
			release(t, a, p.ID, tc.first)
			release(t, a, p.ID, tc.second)
		})
	}
}

// TestLargePoolsCostLikeSmallOnes checks that the memory of a pool does not
// depend on its size: a bitmap of a /8 would take 2 MiB, of a /64 forever.
func TestLargePoolsCostLikeSmallOnes(t *testing.T) {
	const pools, addrs = 50, 20
	cost := func(subnet func(i int) netip.Prefix) uint64 {
		a := newAllocator(t)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range pools {
			s := subnet(i)
			p, err := a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: s, V6: s.Addr().Is6()})
			require.NoError(t, err)
			for range addrs {
				next(t, a, p.ID)
			}
		}
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(a)
		return (after.TotalAlloc - before.TotalAlloc) / pools
	}
	small := cost(func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24) })
	huge4 := cost(func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i + 1), 0, 0, 0}), 8) })
	huge6 := cost(func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 7: byte(i)}), 64) })
	t.Logf("bytes per pool with %d addresses: /24 %d, /8 %d, IPv6 /64 %d", addrs, small, huge4, huge6)
	assert.Less(t, huge4, 2*small+1024)
	assert.Less(t, huge6, 2*small+2048)
	assert.Less(t, huge4, uint64(16<<10))
}

func TestReleaseAddressErrors(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	prefer(t, a, p.ID, "10.0.0.5")
	assert.Equal(t, addr("10.0.0.1"), next(t, a, p.ID))
	release(t, a, p.ID, "10.0.0.1")

	for _, tc := range []struct {
		name, pool string
		addr       netip.Addr
		is         error
		msg        string
	}{
		{"never allocated", p.ID, addr("10.0.0.9"), errdefs.ErrNotFound, "address 10.0.0.9 is not allocated in pool 10.0.0.0/24"},
		{"already released", p.ID, addr("10.0.0.1"), errdefs.ErrNotFound, "address 10.0.0.1 is not allocated in pool 10.0.0.0/24"},
		{"network address", p.ID, addr("10.0.0.0"), errdefs.ErrNotFound, "address 10.0.0.0 is not allocated"},
		{"outside subnet", p.ID, addr("10.0.1.5"), errdefs.ErrNotFound, "address 10.0.1.5 is not allocated"},
		{"other family", p.ID, addr("::ffff:10.0.0.5"), errdefs.ErrNotFound, "address ::ffff:10.0.0.5 is not allocated"},
		{"zero address", p.ID, netip.Addr{}, errdefs.ErrInvalid, "address is not set"},
		{"unknown pool", "local/10.0.0.0/24#999", addr("10.0.0.5"), errdefs.ErrNotFound, `pool "local/10.0.0.0/24#999"`},
		{"empty pool id", "", addr("10.0.0.5"), errdefs.ErrNotFound, `pool ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := a.ReleaseAddress(t.Context(), tc.pool, tc.addr)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
		})
	}

	// Nothing changed: .5 is still allocated and the cursor still after .1.
	_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr("10.0.0.5")})
	require.ErrorIs(t, err, errdefs.ErrExists)
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID))
}

func TestRequestAddressUnknownPool(t *testing.T) {
	a := newAllocator(t)
	_, err := a.RequestAddress(t.Context(), "nope", ipam.AddressRequest{})
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, `pool "nope"`)
}

func TestCanceledContext(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	got := next(t, a, p.ID)
	before := a.Pools()

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: prefix("10.1.0.0/24")})
	require.ErrorIs(t, err, context.Canceled)
	_, err = a.RequestPool(ctx, ipam.PoolRequest{})
	require.ErrorIs(t, err, context.Canceled)
	_, err = a.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, a.ReleaseAddress(ctx, p.ID, got), context.Canceled)
	require.ErrorIs(t, a.ReleasePool(ctx, p.ID), context.Canceled)

	assert.Equal(t, before, a.Pools())
	assert.Equal(t, addr("10.0.0.2"), next(t, a, p.ID))
	release(t, a, p.ID, got.String())
}

func TestConcurrentAddresses(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	var live sync.Map // address -> goroutine holding it

	const workers, rounds, hold = 8, 300, 10 // at most 80 of 254 held at once
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var mine []netip.Addr
			for i := range rounds {
				var got netip.Addr
				var err error
				if i%7 == 3 {
					// Preferred requests race with dynamic ones; a conflict is fine.
					got, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + (w*31+i)%254)})})
					if err != nil {
						assert.ErrorIs(t, err, errdefs.ErrExists)
						continue
					}
				} else if got, err = a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{}); !assert.NoError(t, err) {
					return
				}
				if prev, loaded := live.LoadOrStore(got, w); loaded {
					t.Errorf("%s handed to worker %d while held by worker %v", got, w, prev)
				}
				mine = append(mine, got)
				if len(mine) > hold {
					live.Delete(mine[0])
					assert.NoError(t, a.ReleaseAddress(t.Context(), p.ID, mine[0]))
					mine = mine[1:]
				}
			}
			for _, m := range mine {
				live.Delete(m)
				assert.NoError(t, a.ReleaseAddress(t.Context(), p.ID, m))
			}
		})
	}
	wg.Wait()

	// Everything was released: the whole pool is free.
	for i := 1; i <= 254; i++ {
		prefer(t, a, p.ID, fmt.Sprintf("10.0.0.%d", i))
	}
}

func TestConcurrentPools(t *testing.T) {
	a := newAllocator(t, ipam.DefaultPool{Base: prefix("10.0.0.0/8"), Size: 24})
	const workers, rounds = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				var req ipam.PoolRequest
				if i%5 == 0 { // explicit subnets race with default ones
					req.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(w*rounds + i), 0}), 24)
				}
				p, err := a.RequestPool(t.Context(), req)
				if err != nil {
					assert.ErrorIs(t, err, ipam.ErrOverlap)
					continue
				}
				got, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
				assert.NoError(t, err)
				if i%2 == 0 {
					assert.NoError(t, a.ReleaseAddress(t.Context(), p.ID, got))
					assert.NoError(t, a.ReleasePool(t.Context(), p.ID))
				}
				_ = a.Pools()
			}
		})
	}
	wg.Wait()

	pools := a.Pools()
	assert.NotEmpty(t, pools)
	for i, p := range pools {
		for _, q := range pools[i+1:] {
			assert.False(t, p.Subnet.Overlaps(q.Subnet), "%s overlaps %s", p.Subnet, q.Subnet)
			assert.NotEqual(t, p.ID, q.ID)
		}
	}
}

// TestMemoryPerAddress bounds the heap the allocator holds per allocated
// address: next to nothing for consecutive addresses, and under 64 bytes
// when every other address is allocated, each its own run.
func TestMemoryPerAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 200,000 addresses")
	}
	const n = 200000
	for _, tc := range []struct {
		name       string
		fragmented bool
		max        float64
	}{
		{"consecutive", false, 1},
		{"every other", true, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			a := newAllocator(t)
			p := subnetPool(t, a, "10.0.0.0/8", "")
			x := addr("10.0.0.1")
			for range n {
				req := ipam.AddressRequest{}
				if tc.fragmented {
					req.Preferred, x = x, x.Next().Next()
				}
				_, err := a.RequestAddress(t.Context(), p.ID, req)
				require.NoError(t, err)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(a)
			per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
			t.Logf("%.2f bytes per address", per)
			assert.Less(t, per, tc.max)
		})
	}
}
