package ipam_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestRequestPoolSizeAndAvoidErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  ipam.PoolRequest
		is   error
		msg  string
	}{
		{"negative size", ipam.PoolRequest{Size: -1}, errdefs.ErrInvalid, "size -1 is outside 0..32 for IPv4"},
		{"IPv4 size above 32", ipam.PoolRequest{Size: 33}, errdefs.ErrInvalid, "size 33 is outside 0..32 for IPv4"},
		{"IPv6 size above 128", ipam.PoolRequest{Size: 129, V6: true}, errdefs.ErrInvalid, "size 129 is outside 0..128 for IPv6"},
		{"size with subnet", ipam.PoolRequest{Subnet: prefix("10.9.0.0/24"), Size: 24},
			errdefs.ErrInvalid, "size 24 is set with subnet 10.9.0.0/24"},
		{"invalid avoid", ipam.PoolRequest{Avoid: []netip.Prefix{prefix("10.0.0.0/8"), {}}},
			errdefs.ErrInvalid, "avoid[1] invalid Prefix is not a valid prefix"},
		{"invalid avoid with subnet", ipam.PoolRequest{Subnet: prefix("10.9.0.0/24"), Avoid: []netip.Prefix{netip.PrefixFrom(addr("10.0.0.0"), 40)}},
			errdefs.ErrInvalid, "avoid[0] invalid Prefix"},
		{"size larger than every base", ipam.PoolRequest{Size: 12},
			ipam.ErrPoolExhausted, "no IPv4 default pool can hold a /12"},
		{"avoid everything", ipam.PoolRequest{Avoid: prefixes("0.0.0.0/0")},
			ipam.ErrPoolExhausted, "every IPv4 default pool overlaps a pool in use or a prefix to avoid"},
		{"avoid every /24", ipam.PoolRequest{Size: 24, Avoid: prefixes("172.16.0.0/12", "192.168.0.0/16")},
			ipam.ErrPoolExhausted, "every /24 of the IPv4 default pools overlaps a pool in use or a prefix to avoid"},
		{"v6 size without v6 pools", ipam.PoolRequest{Size: 64, V6: true},
			ipam.ErrPoolExhausted, "no IPv6 default pool is configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAllocator(t)
			subnetPool(t, a, "10.0.0.0/24", "")
			before := a.Pools()
			p, err := a.RequestPool(t.Context(), tc.req)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
			assert.Equal(t, ipam.Pool{}, p)
			assert.Equal(t, before, a.Pools(), "a failed request changes nothing")
		})
	}
}

// TestRequestPoolAvoid checks that a pool taken from the default pools
// overlaps no prefix to avoid: the host's routes, addresses and nameservers.
func TestRequestPoolAvoid(t *testing.T) {
	for _, tc := range []struct {
		name     string
		defaults []ipam.DefaultPool // nil: Docker's
		held     []string
		req      ipam.PoolRequest
		want     string
	}{
		{"nothing to avoid", nil, nil, ipam.PoolRequest{}, "172.17.0.0/16"},
		{"a LAN route inside the first candidate", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("172.17.5.0/24")}, "172.18.0.0/16"},
		{"an interface address with its length: host bits ignored", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("172.17.0.7/16", "172.18.200.1/17")}, "172.19.0.0/16"},
		{"a nameserver as a /32", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("172.17.0.53/32")}, "172.18.0.0/16"},
		{"a VPN route covering several candidates", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("172.16.0.0/12")}, "192.168.0.0/20"},
		{"avoid and held pools together", nil, []string{"172.18.0.0/16", "172.20.0.0/15"},
			ipam.PoolRequest{Avoid: prefixes("172.17.0.0/16", "172.19.128.0/17")}, "172.22.0.0/16"},
		{"overlapping and unsorted avoid entries", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("172.19.0.0/16", "172.17.0.0/16", "172.17.4.0/22", "172.18.0.0/15")}, "172.20.0.0/16"},
		{"entries of the other family are ignored", nil, nil,
			ipam.PoolRequest{Avoid: prefixes("::/0", "::ffff:172.17.0.0/112")}, "172.17.0.0/16"},
		{"IPv6: the host's /64 is avoided",
			[]ipam.DefaultPool{{Base: prefix("fd00::/62"), Size: 64}}, nil,
			ipam.PoolRequest{V6: true, Avoid: prefixes("fd00::1/64", "10.0.0.0/8")}, "fd00:0:0:1::/64"},
		{"size only: any /24", nil, nil, ipam.PoolRequest{Size: 24}, "172.17.0.0/24"},
		{"size only, avoiding", nil, []string{"172.17.0.0/24"},
			ipam.PoolRequest{Size: 24, Avoid: prefixes("172.17.1.0/24", "172.17.2.128/25")}, "172.17.3.0/24"},
		{"size larger than some bases' sizes", []ipam.DefaultPool{{Base: prefix("10.0.0.0/8"), Size: 24}}, []string{"10.0.0.0/24"},
			ipam.PoolRequest{Size: 16}, "10.1.0.0/16"},
		{"size skips bases too small", []ipam.DefaultPool{{Base: prefix("10.0.0.0/24"), Size: 28}, {Base: prefix("10.1.0.0/16"), Size: 24}}, nil,
			ipam.PoolRequest{Size: 20}, "10.1.0.0/20"},
		{"size /32", []ipam.DefaultPool{{Base: prefix("192.0.2.0/30"), Size: 30}}, nil,
			ipam.PoolRequest{Size: 32, Avoid: prefixes("192.0.2.0/31")}, "192.0.2.2/32"},
		{"IPv6 size", []ipam.DefaultPool{{Base: prefix("fd00::/48"), Size: 64}}, []string{"fd00::/56"},
			ipam.PoolRequest{V6: true, Size: 56}, "fd00:0:0:100::/56"},
		{"end of the IPv4 space", []ipam.DefaultPool{{Base: prefix("255.255.255.0/24"), Size: 26}}, nil,
			ipam.PoolRequest{Avoid: prefixes("255.255.255.0/25", "255.255.255.128/26")}, "255.255.255.192/26"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defaults := tc.defaults
			if defaults == nil {
				defaults = ipam.DefaultPools()
			}
			a := newAllocator(t, defaults...)
			for _, h := range tc.held {
				subnetPool(t, a, h, "")
			}
			p, err := a.RequestPool(t.Context(), tc.req)
			require.NoError(t, err)
			assert.Equal(t, tc.want, p.Subnet.String())
			for _, av := range tc.req.Avoid {
				if av.Addr().Is6() == tc.req.V6 && !av.Addr().Is4In6() {
					assert.False(t, av.Masked().Overlaps(p.Subnet), "%s overlaps %s", p.Subnet, av)
				}
			}
		})
	}
}

func TestAvoidIgnoredForExplicitSubnet(t *testing.T) {
	a := newAllocator(t)
	p, err := a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: prefix("172.17.0.0/16"), Avoid: prefixes("172.17.0.0/16")})
	require.NoError(t, err)
	assert.Equal(t, prefix("172.17.0.0/16"), p.Subnet)
}

// TestDefaultPoolSearchSkipsRunsOfPools checks the jumps over merged held
// subnets against a plain walk: the result is the same subnet.
func TestDefaultPoolSearchSkipsRunsOfPools(t *testing.T) {
	a := newAllocator(t, ipam.DefaultPool{Base: prefix("10.0.0.0/8"), Size: 24})
	var ids []string
	for i := range 1000 {
		p, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), p.Subnet.String())
		ids = append(ids, p.ID)
	}
	// Free a hole in the middle: it is found, then the walk goes on past
	// the end.
	require.NoError(t, a.ReleasePool(t.Context(), ids[500]))
	p, err := a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, "10.1.244.0/24", p.Subnet.String())
	p, err = a.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, "10.3.232.0/24", p.Subnet.String())
	// A /16 request jumps past the four /16s the /24s touch.
	p, err = a.RequestPool(t.Context(), ipam.PoolRequest{Size: 16})
	require.NoError(t, err)
	assert.Equal(t, "10.4.0.0/16", p.Subnet.String())
	// Held pools of both families do not meet: an IPv6 pool at the same
	// numeric position blocks nothing.
	b := newAllocator(t, ipam.DefaultPool{Base: prefix("0.0.0.0/8"), Size: 24})
	subnetPool(t, b, "::/104", "")
	p, err = b.RequestPool(t.Context(), ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, "0.0.0.0/24", p.Subnet.String())
}
