package ipam

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
)

// TestRestoreStateRules checks every rule a stored or snapshotted state must
// keep; each broken rule is refused and changes nothing.
func TestRestoreStateRules(t *testing.T) {
	ap := netip.MustParseAddr
	pp := netip.MustParsePrefix
	pool := func(id, subnet, rng, cursor string) PoolRecord {
		r := PoolRecord{ID: id, Subnet: pp(subnet)}
		if rng != "" {
			r.IPRange = pp(rng)
		}
		if cursor != "" {
			r.Cursor = ap(cursor)
		}
		return r
	}
	rng := func(id, first, last string) RangeRecord {
		return RangeRecord{Pool: id, First: ap(first), Last: ap(last)}
	}

	for _, tc := range []struct {
		name   string
		pools  []PoolRecord
		ranges []RangeRecord
		msg    string // "" for a good state
	}{
		{"good", []PoolRecord{pool("a", "10.0.0.0/24", "10.0.0.0/25", "10.0.0.9"), pool("b", "fd00::/64", "", "")},
			[]RangeRecord{rng("a", "10.0.0.1", "10.0.0.9"), rng("a", "10.0.0.200", "10.0.0.254"), rng("b", "fd00::ffff", "fd00::1:0")}, ""},
		{"no ID", []PoolRecord{pool("", "10.0.0.0/24", "", "")}, nil, "pool 0 has no ID"},
		{"ID twice", []PoolRecord{pool("a", "10.0.0.0/24", "", ""), pool("a", "10.0.1.0/24", "", "")}, nil, `pool "a" appears twice`},
		{"subnet host bits", []PoolRecord{pool("a", "10.0.0.1/24", "", "")}, nil, "subnet 10.0.0.1/24 has host bits set"},
		{"invalid subnet", []PoolRecord{{ID: "a"}}, nil, "is not a valid prefix"},
		{"ip-range outside", []PoolRecord{pool("a", "10.0.0.0/24", "10.0.1.0/25", "")}, nil, "ip-range 10.0.1.0/25 is outside subnet 10.0.0.0/24"},
		{"overlapping pools", []PoolRecord{pool("a", "10.0.0.0/16", "", ""), pool("b", "10.0.3.0/24", "", "")}, nil, "subnet 10.0.3.0/24 overlaps pool 10.0.0.0/16"},
		{"cursor outside range", []PoolRecord{pool("a", "10.0.0.0/24", "10.0.0.0/25", "10.0.0.200")}, nil, "cursor 10.0.0.200 is outside its range"},
		{"cursor of the other family", []PoolRecord{pool("a", "10.0.0.0/24", "", "::1")}, nil, "cursor ::1 is outside its range"},
		{"range of unknown pool", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("b", "10.0.0.1", "10.0.0.1")}, `of unknown pool "b"`},
		{"range outside subnet", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.250", "10.0.1.2")}, "range 10.0.0.250-10.0.1.2 is not a range of subnet"},
		{"range inverted", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.9", "10.0.0.2")}, "range 10.0.0.9-10.0.0.2 is not a range"},
		{"range of the other family", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "::1", "::2")}, "is not a range of subnet"},
		{"range holds the network address", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.0", "10.0.0.3")}, "holds reserved address 10.0.0.0"},
		{"range holds the broadcast address", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.250", "10.0.0.255")}, "holds reserved address 10.0.0.255"},
		{"range holds the anycast address", []PoolRecord{pool("a", "fd00::/64", "", "")}, []RangeRecord{rng("a", "fd00::", "fd00::3")}, "holds reserved address fd00::"},
		{"ranges overlap", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.5", "10.0.0.9"), rng("a", "10.0.0.1", "10.0.0.5")}, "overlap or touch"},
		{"ranges touch", []PoolRecord{pool("a", "10.0.0.0/24", "", "")}, []RangeRecord{rng("a", "10.0.0.1", "10.0.0.4"), rng("a", "10.0.0.5", "10.0.0.9")}, "overlap or touch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Config{})
			require.NoError(t, err)
			p, err := a.RequestPool(t.Context(), PoolRequest{Subnet: pp("192.0.2.0/24")})
			require.NoError(t, err)
			before, err := a.Snapshot()
			require.NoError(t, err)

			err = a.restoreState(StoreState{Seq: 7, Pools: tc.pools, Ranges: tc.ranges})
			if tc.msg == "" {
				require.NoError(t, err)
				assert.Len(t, a.Pools(), len(tc.pools))
				assert.Equal(t, uint64(9), a.pools["a"].inRange, "10.0.0.1-9 in the range, .200-.254 outside")
				got, err := a.RequestAddress(t.Context(), "a", AddressRequest{})
				require.NoError(t, err)
				assert.Equal(t, ap("10.0.0.10"), got)
				return
			}
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			assert.ErrorContains(t, err, tc.msg)
			after, err := a.Snapshot()
			require.NoError(t, err)
			assert.Equal(t, before, after)
			_, err = a.RequestAddress(t.Context(), p.ID, AddressRequest{})
			require.NoError(t, err)
		})
	}
}
