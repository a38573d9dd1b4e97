package ipam

import (
	"math"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestLastAddr(t *testing.T) {
	for _, tc := range []struct{ prefix, want string }{
		{"10.0.0.0/24", "10.0.0.255"},
		{"10.0.0.0/20", "10.0.15.255"},
		{"10.0.0.0/8", "10.255.255.255"},
		{"10.0.0.5/32", "10.0.0.5"},
		{"10.0.0.4/31", "10.0.0.5"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"10.0.0.77/24", "10.0.0.255"}, // host bits are ignored
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff"},
		{"fd00::/125", "fd00::7"},
		{"fd00::/127", "fd00::1"},
		{"fd00::1/128", "fd00::1"},
		{"fd00::/12", "fd0f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			assert.Equal(t, netip.MustParseAddr(tc.want), lastAddr(netip.MustParsePrefix(tc.prefix)))
		})
	}
}

func TestReservedAddrs(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"10.0.0.0/24", []string{"10.0.0.0", "10.0.0.255"}},
		{"10.0.0.0/30", []string{"10.0.0.0", "10.0.0.3"}},
		{"10.0.0.0/31", nil},
		{"10.0.0.0/32", nil},
		{"fd00::/64", []string{"fd00::"}},
		{"fd00::/126", []string{"fd00::"}},
		{"fd00::/127", nil},
		{"fd00::/128", nil},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			var want []netip.Addr
			for _, s := range tc.want {
				want = append(want, netip.MustParseAddr(s))
			}
			assert.Equal(t, want, reservedAddrs(netip.MustParsePrefix(tc.prefix)))
		})
	}
}

func TestUsableIn(t *testing.T) {
	for _, tc := range []struct {
		subnet, rng string
		want        uint64
	}{
		{"10.0.0.0/24", "10.0.0.0/24", 254},
		{"10.0.0.0/29", "10.0.0.0/29", 6},
		{"10.0.0.0/31", "10.0.0.0/31", 2},
		{"10.0.0.0/32", "10.0.0.0/32", 1},
		{"10.0.0.0/8", "10.0.0.0/8", 1<<24 - 2},
		{"0.0.0.0/0", "0.0.0.0/0", 1<<32 - 2},
		{"10.0.0.0/24", "10.0.0.0/30", 3},
		{"10.0.0.0/24", "10.0.0.252/30", 3},
		{"10.0.0.0/24", "10.0.0.4/30", 4},
		{"10.0.0.0/24", "10.0.0.0/32", 0},
		{"fd00::/64", "fd00::/64", math.MaxUint64},
		{"fd00::/64", "fd00::/65", 1<<63 - 1}, // exact below the cap: minus the anycast address
		{"fd00::/120", "fd00::/120", 255},
		{"fd00::/127", "fd00::/127", 2},
		{"fd00::/128", "fd00::/128", 1},
		{"::/0", "::/0", math.MaxUint64},
	} {
		t.Run(tc.subnet+" "+tc.rng, func(t *testing.T) {
			subnet, rng := netip.MustParsePrefix(tc.subnet), netip.MustParsePrefix(tc.rng)
			assert.Equal(t, tc.want, usableIn(rng, reservedAddrs(subnet)))
		})
	}
}

// TestPoolHoldsOnlyAllocatedAddresses checks that a pool's state is its
// allocated addresses, whatever its size.
func TestPoolHoldsOnlyAllocatedAddresses(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"10.0.0.0/8", "fd00::/64"} {
		p, err := a.RequestPool(t.Context(), PoolRequest{Subnet: netip.MustParsePrefix(s), V6: netip.MustParsePrefix(s).Addr().Is6()})
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			if _, err := a.RequestAddress(t.Context(), p.ID, AddressRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		// Ten consecutive addresses are one run.
		assert.Equal(t, 1, a.pools[p.ID].runs.n, s)
		assert.Equal(t, uint64(10), a.pools[p.ID].inRange, s)
	}
}
