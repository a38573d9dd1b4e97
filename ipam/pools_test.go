package ipam_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

func TestDefaultPools(t *testing.T) {
	var want []ipam.DefaultPool
	for b := 17; b <= 31; b++ {
		want = append(want, ipam.DefaultPool{Base: prefix(fmt.Sprintf("172.%d.0.0/16", b)), Size: 16})
	}
	want = append(want, ipam.DefaultPool{Base: prefix("192.168.0.0/16"), Size: 20})
	assert.Equal(t, want, ipam.DefaultPools())

	// Each call returns a new slice.
	ipam.DefaultPools()[0].Size = 99
	assert.Equal(t, 16, ipam.DefaultPools()[0].Size)
}

func TestNewValidatesDefaultPools(t *testing.T) {
	ok := ipam.DefaultPool{Base: prefix("10.0.0.0/8"), Size: 16}
	for _, tc := range []struct {
		name string
		pool ipam.DefaultPool
		msg  string
	}{
		{"zero base", ipam.DefaultPool{Size: 16}, "default-pools[1] base invalid Prefix is not a valid prefix"},
		{"host bits", ipam.DefaultPool{Base: prefix("10.0.0.1/8"), Size: 16}, "default-pools[1] base 10.0.0.1/8 has host bits set"},
		{"mapped", ipam.DefaultPool{Base: prefix("::ffff:10.0.0.0/104"), Size: 120}, "default-pools[1] base ::ffff:10.0.0.0/104 is an IPv4-mapped IPv6 prefix"},
		{"size below bits", ipam.DefaultPool{Base: prefix("10.0.0.0/16"), Size: 8}, "default-pools[1] size 8 is outside 16..32 for base 10.0.0.0/16"},
		{"size above 32", ipam.DefaultPool{Base: prefix("10.0.0.0/16"), Size: 33}, "default-pools[1] size 33 is outside 16..32 for base 10.0.0.0/16"},
		{"size above 128", ipam.DefaultPool{Base: prefix("fd00::/48"), Size: 129}, "default-pools[1] size 129 is outside 48..128 for base fd00::/48"},
		{"negative size", ipam.DefaultPool{Base: prefix("fd00::/48"), Size: -1}, "default-pools[1] size -1 is outside 48..128"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ipam.New(ipam.Config{DefaultPools: []ipam.DefaultPool{ok, tc.pool}})
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			assert.ErrorContains(t, err, tc.msg)
			assert.Nil(t, a)
		})
	}
}

func TestNewAcceptsEdgeSizes(t *testing.T) {
	a := newAllocator(t,
		ipam.DefaultPool{Base: prefix("10.0.0.0/8"), Size: 8},       // Size == Bits: the base whole
		ipam.DefaultPool{Base: prefix("192.0.2.0/24"), Size: 32},    // single addresses
		ipam.DefaultPool{Base: prefix("fd00::/120"), Size: 128},     // single IPv6 addresses
		ipam.DefaultPool{Base: prefix("0.0.0.0/0"), Size: 1},        // the whole space in halves
		ipam.DefaultPool{Base: prefix("2001:db8::/32"), Size: 32},   // an IPv6 base whole
		ipam.DefaultPool{Base: prefix("fd00:1::/64"), Size: 64 + 1}, // odd sizes
	)
	require.NotNil(t, a)
}

func TestNewCopiesConfig(t *testing.T) {
	defaults := []ipam.DefaultPool{{Base: prefix("10.0.0.0/16"), Size: 24}}
	a := newAllocator(t, defaults...)
	defaults[0] = ipam.DefaultPool{Base: prefix("10.9.0.0/16"), Size: 24}

	p, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, prefix("10.0.0.0/24"), p.Subnet)
}

func TestNoDefaultPoolConfigured(t *testing.T) {
	for _, tc := range []struct {
		name     string
		defaults []ipam.DefaultPool
		v6       bool
		msg      string
	}{
		{"docker defaults have no IPv6", nil, true, "no IPv6 default pool is configured"},
		{"empty list, IPv4", []ipam.DefaultPool{}, false, "no IPv4 default pool is configured"},
		{"empty list, IPv6", []ipam.DefaultPool{}, true, "no IPv6 default pool is configured"},
		{"only IPv4", []ipam.DefaultPool{{Base: prefix("10.0.0.0/8"), Size: 24}}, true, "no IPv6 default pool is configured"},
		{"only IPv6", []ipam.DefaultPool{{Base: prefix("fd00::/48"), Size: 64}}, false, "no IPv4 default pool is configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ipam.New(ipam.Config{DefaultPools: tc.defaults})
			require.NoError(t, err)
			_, err = a.RequestPool(t.Context(), ipam.PoolRequest{V6: tc.v6})
			require.ErrorIs(t, err, ipam.ErrPoolExhausted)
			assert.ErrorContains(t, err, tc.msg)
			assert.Empty(t, a.Pools())
		})
	}
}

func TestDefaultPoolWalk(t *testing.T) {
	a := newAllocator(t) // Docker's defaults
	get := func() string {
		t.Helper()
		p, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
		require.NoError(t, err)
		assert.False(t, p.IPRange.IsValid())
		return p.Subnet.String()
	}

	assert.Equal(t, "172.17.0.0/16", get())
	second, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, prefix("172.18.0.0/16"), second.Subnet)

	// A user's subnet inside the next candidate makes the walk skip it.
	subnetPool(t, a, "172.19.5.0/24", "")
	assert.Equal(t, "172.20.0.0/16", get())

	// A released default subnet is the first free one again.
	require.NoError(t, a.ReleasePool(t.Context(), second.ID))
	assert.Equal(t, "172.18.0.0/16", get())

	// A user's subnet covering several candidates is skipped in one go.
	subnetPool(t, a, "172.24.0.0/13", "") // 172.24-31
	for b := 21; b <= 23; b++ {
		assert.Equal(t, fmt.Sprintf("172.%d.0.0/16", b), get())
	}
	// Every 172 candidate is held: on to 192.168.0.0/16 cut into /20s.
	assert.Equal(t, "192.168.0.0/20", get())
	subnetPool(t, a, "192.168.16.0/20", "")
	subnetPool(t, a, "192.168.40.0/24", "") // inside 192.168.32.0/20
	assert.Equal(t, "192.168.48.0/20", get())

	for i := 4; i < 16; i++ {
		assert.Equal(t, fmt.Sprintf("192.168.%d.0/20", i*16), get())
		if i == 6 {
			i++ // 192.168.112.0/20 is taken below
			subnetPool(t, a, "192.168.112.0/20", "")
		}
	}

	before := a.Pools()
	_, err = a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	assert.ErrorContains(t, err, "every IPv4 default pool overlaps a pool in use")
	assert.NotErrorIs(t, err, errdefs.ErrInvalid)
	assert.Equal(t, before, a.Pools(), "a failed request changes nothing")
}

func TestDefaultPoolWalkCases(t *testing.T) {
	for _, tc := range []struct {
		name     string
		defaults []ipam.DefaultPool
		held     []string
		v6       bool
		want     []string // the subnets handed out, in order, before exhaustion
	}{
		{
			name:     "small base cut into /31s",
			defaults: []ipam.DefaultPool{{Base: prefix("10.0.0.0/30"), Size: 31}},
			want:     []string{"10.0.0.0/31", "10.0.0.2/31"},
		},
		{
			name:     "size equal to base bits",
			defaults: []ipam.DefaultPool{{Base: prefix("10.0.0.0/24"), Size: 24}},
			want:     []string{"10.0.0.0/24"},
		},
		{
			name: "several bases in order",
			defaults: []ipam.DefaultPool{
				{Base: prefix("10.1.0.0/23"), Size: 24},
				{Base: prefix("10.0.0.0/24"), Size: 25},
			},
			want: []string{"10.1.0.0/24", "10.1.1.0/24", "10.0.0.0/25", "10.0.0.128/25"},
		},
		{
			name:     "held pool larger than the base",
			defaults: []ipam.DefaultPool{{Base: prefix("10.0.1.0/24"), Size: 26}, {Base: prefix("10.1.0.0/25"), Size: 26}},
			held:     []string{"10.0.0.0/16"},
			want:     []string{"10.1.0.0/26", "10.1.0.64/26"},
		},
		{
			name:     "held pools inside candidates",
			defaults: []ipam.DefaultPool{{Base: prefix("10.0.0.0/22"), Size: 24}},
			held:     []string{"10.0.0.7/32", "10.0.0.128/25", "10.0.2.0/30"},
			want:     []string{"10.0.1.0/24", "10.0.3.0/24"},
		},
		{
			name:     "end of the IPv4 space",
			defaults: []ipam.DefaultPool{{Base: prefix("255.255.255.0/24"), Size: 26}},
			held:     []string{"255.255.255.0/26", "255.255.255.192/26"},
			want:     []string{"255.255.255.64/26", "255.255.255.128/26"},
		},
		{
			name:     "IPv6 from a mixed list",
			defaults: []ipam.DefaultPool{{Base: prefix("10.0.0.0/8"), Size: 24}, {Base: prefix("fd00::/62"), Size: 64}},
			held:     []string{"fd00:0:0:1::/64"},
			v6:       true,
			want:     []string{"fd00::/64", "fd00:0:0:2::/64", "fd00:0:0:3::/64"},
		},
		{
			name:     "IPv4 from a mixed list",
			defaults: []ipam.DefaultPool{{Base: prefix("fd00::/62"), Size: 64}, {Base: prefix("10.0.0.0/23"), Size: 24}},
			want:     []string{"10.0.0.0/24", "10.0.1.0/24"},
		},
		{
			name:     "end of the IPv6 space",
			defaults: []ipam.DefaultPool{{Base: prefix("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"), Size: 127}},
			held:     []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"},
			v6:       true,
			want:     []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/127"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAllocator(t, tc.defaults...)
			for _, h := range tc.held {
				subnetPool(t, a, h, "")
			}
			var got []string
			for range len(tc.want) + 1 {
				p, err := a.RequestPool(t.Context(), ipam.PoolRequest{V6: tc.v6})
				if err != nil {
					require.ErrorIs(t, err, ipam.ErrPoolExhausted)
					break
				}
				got = append(got, p.Subnet.String())
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestDefaultPoolWalkIsArithmetic walks bases with an astronomical number of
// candidates; listing them would never end.
func TestDefaultPoolWalkIsArithmetic(t *testing.T) {
	a := newAllocator(t,
		ipam.DefaultPool{Base: prefix("fc00::/7"), Size: 128}, // 2^121 candidates
		ipam.DefaultPool{Base: prefix("0.0.0.0/0"), Size: 32}, // 2^32 candidates
	)
	subnetPool(t, a, "fc00::/8", "")
	subnetPool(t, a, "fd00::/16", "")
	subnetPool(t, a, "fd01::/128", "")
	p, err := a.RequestPool(t.Context(), ipam.PoolRequest{V6: true})
	require.NoError(t, err)
	assert.Equal(t, prefix("fd01::1/128"), p.Subnet)

	subnetPool(t, a, "0.0.0.0/1", "")
	subnetPool(t, a, "128.0.0.0/2", "")
	p, err = a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, prefix("192.0.0.0/32"), p.Subnet)

	// A thousand held pools, each skipped once per walk.
	b := newAllocator(t, ipam.DefaultPool{Base: prefix("10.0.0.0/8"), Size: 24})
	for i := range 1024 {
		_, err := b.RequestPool(t.Context(), ipam.PoolRequest{})
		require.NoError(t, err, "pool %d", i)
	}
	p, err = b.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, prefix("10.4.0.0/24"), p.Subnet)
}

func TestDefaultPoolsNeverOverlapHeldPools(t *testing.T) {
	a := newAllocator(t, ipam.DefaultPool{Base: prefix("10.0.0.0/16"), Size: 20})
	for _, s := range []string{"10.0.0.0/24", "10.0.17.0/24", "10.0.32.0/19", "10.0.96.0/20"} {
		subnetPool(t, a, s, "")
	}
	for {
		_, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
		if err != nil {
			require.ErrorIs(t, err, ipam.ErrPoolExhausted)
			break
		}
	}
	pools := a.Pools()
	for i, p := range pools {
		for _, q := range pools[i+1:] {
			assert.False(t, p.Subnet.Overlaps(q.Subnet), "%s overlaps %s", p.Subnet, q.Subnet)
		}
	}
	// 16 /20s minus 10.0.0.0/20, 10.0.16.0/20, the two in 10.0.32.0/19 and
	// 10.0.96.0/20 leaves 11, beside the 4 held.
	assert.Len(t, pools, 4+11)
	assert.Contains(t, subnets(a), "10.0.64.0/20")
	assert.NotContains(t, subnets(a), "10.0.48.0/20")
}
