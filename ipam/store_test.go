package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

// failingStore wraps a MemStore and fails every commit while fail is set.
type failingStore struct {
	ipam.MemStore
	fail bool
}

var errStoreDown = errors.New("store down")

func (s *failingStore) Commit(ctx context.Context, c ipam.Commit) error {
	if s.fail {
		return errStoreDown
	}
	return s.MemStore.Commit(ctx, c)
}

func openStore(t *testing.T, s ipam.Store, defaults ...ipam.DefaultPool) *ipam.LocalAllocator {
	t.Helper()
	a, err := ipam.Open(t.Context(), ipam.Config{DefaultPools: defaults, Store: s})
	require.NoError(t, err)
	return a
}

func snapshot(t *testing.T, a *ipam.LocalAllocator) []byte {
	t.Helper()
	b, err := a.Snapshot()
	require.NoError(t, err)
	return b
}

func TestNewRefusesStore(t *testing.T) {
	a, err := ipam.New(ipam.Config{Store: &ipam.MemStore{}})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	assert.ErrorContains(t, err, "ipam.Open")
	assert.Nil(t, a)
}

// TestStoreReopen works through a store, then opens a second allocator on
// the same store: its state is exactly the first's.
func TestStoreReopen(t *testing.T) {
	var s ipam.MemStore
	a := openStore(t, &s)
	p := subnetPool(t, a, "10.0.0.0/24", "10.0.0.0/25")
	q := subnetPool(t, a, "fd00::/64", "")
	gone := subnetPool(t, a, "10.0.1.0/24", "")
	for range 10 {
		next(t, a, p.ID)
		next(t, a, q.ID)
	}
	prefer(t, a, p.ID, "10.0.0.200")
	release(t, a, p.ID, "10.0.0.5")
	release(t, a, q.ID, "fd00::3")
	next(t, a, gone.ID)
	require.NoError(t, a.ReleasePool(t.Context(), gone.ID))

	b := openStore(t, &s)
	assert.Equal(t, snapshot(t, a), snapshot(t, b))
	assert.Equal(t, a.Pools(), b.Pools())
	// The cursor came back: the next address follows the last handed out.
	assert.Equal(t, addr("10.0.0.11"), next(t, b, p.ID))
	_, err := b.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr("10.0.0.200")})
	require.ErrorIs(t, err, errdefs.ErrExists)
	// The pool counter came back: no ID is reused.
	r := subnetPool(t, b, "10.0.1.0/24", "")
	assert.NotEqual(t, gone.ID, r.ID)
}

// TestStoreWritesAreIncremental checks that an operation writes a few
// records, whatever the state already held.
func TestStoreWritesAreIncremental(t *testing.T) {
	var s ipam.MemStore
	a := openStore(t, &s)
	p := subnetPool(t, a, "10.0.0.0/8", "")
	for i := range 5000 { // fragmented: every other address
		prefer(t, a, p.ID, netip.AddrFrom4([4]byte{10, 0, byte(i >> 7), byte(i<<1) | 1}).String())
	}
	for _, op := range []struct {
		name string
		do   func()
		max  int
	}{
		{"dynamic request", func() { next(t, a, p.ID) }, 1 + 3},
		{"preferred request joining two runs", func() { prefer(t, a, p.ID, "10.0.0.4") }, 2},
		{"release splitting a run", func() { release(t, a, p.ID, "10.0.0.4") }, 2},
		{"release of a lone address", func() { release(t, a, p.ID, "10.0.0.7") }, 1},
		{"pool request", func() { subnetPool(t, a, "192.0.2.0/24", "") }, 2},
	} {
		c0, w0 := s.Stats()
		op.do()
		c1, w1 := s.Stats()
		assert.Equal(t, 1, c1-c0, "%s: one commit", op.name)
		assert.LessOrEqual(t, w1-w0, op.max, "%s: records written", op.name)
	}
}

func TestStoreFailureChangesNothing(t *testing.T) {
	s := &failingStore{}
	a := openStore(t, s)
	p := subnetPool(t, a, "10.0.0.0/24", "")
	next(t, a, p.ID)
	next(t, a, p.ID)
	prefer(t, a, p.ID, "10.0.0.9")
	before := snapshot(t, a)

	s.fail = true
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"request pool", func() error {
			_, err := a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: prefix("10.0.1.0/24")})
			return err
		}},
		{"default pool", func() error { _, err := a.RequestPool(t.Context(), ipam.PoolRequest{}); return err }},
		{"release pool", func() error { return a.ReleasePool(t.Context(), p.ID) }},
		{"dynamic address", func() error {
			_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{})
			return err
		}},
		{"preferred address", func() error {
			_, err := a.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr("10.0.0.3")})
			return err
		}},
		{"release address", func() error { return a.ReleaseAddress(t.Context(), p.ID, addr("10.0.0.2")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			require.ErrorIs(t, err, errStoreDown)
			assert.ErrorContains(t, err, "store")
			assert.Equal(t, before, snapshot(t, a), "a failed commit changes nothing")
		})
	}
	s.fail = false
	assert.Equal(t, addr("10.0.0.3"), next(t, a, p.ID))
	// The store holds what the allocator holds.
	assert.Equal(t, snapshot(t, a), snapshot(t, openStore(t, s)))
}

func TestOpenRejectsBadState(t *testing.T) {
	ctx := t.Context()
	var s ipam.MemStore
	require.NoError(t, s.Commit(ctx, ipam.Commit{Seq: 1, PutPool: &ipam.PoolRecord{ID: "p", Subnet: prefix("10.0.0.0/24")}}))
	require.NoError(t, s.Commit(ctx, ipam.Commit{PutRanges: []ipam.RangeRecord{{Pool: "p", First: addr("10.0.0.0"), Last: addr("10.0.0.3")}}}))
	a, err := ipam.Open(ctx, ipam.Config{Store: &s})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	assert.ErrorContains(t, err, "range 10.0.0.0-10.0.0.3 holds reserved address 10.0.0.0")
	assert.Nil(t, a)

	_, err = ipam.Open(ctx, ipam.Config{Store: &s, DefaultPools: []ipam.DefaultPool{{}}})
	require.ErrorIs(t, err, errdefs.ErrInvalid, "the config is checked too")
}

func TestMemStoreErrors(t *testing.T) {
	ctx := t.Context()
	var s ipam.MemStore
	require.ErrorIs(t, s.Commit(ctx, ipam.Commit{DeletePool: "x"}), errdefs.ErrNotFound)
	require.ErrorIs(t, s.Commit(ctx, ipam.Commit{PutRanges: []ipam.RangeRecord{{Pool: "x"}}}), errdefs.ErrNotFound)
	require.ErrorIs(t, s.Commit(ctx, ipam.Commit{DeleteRanges: []ipam.RangeRecord{{Pool: "x"}}}), errdefs.ErrNotFound)
	commits, writes := s.Stats()
	assert.Zero(t, commits)
	assert.Zero(t, writes)
	st, err := s.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, ipam.StoreState{}, st)
}
