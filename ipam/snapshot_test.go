package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

func TestSnapshotRestore(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/8", "10.1.0.0/16")
	q := subnetPool(t, a, "2001:db8::/32", "")
	r := subnetPool(t, a, "192.0.2.0/31", "")
	gone := subnetPool(t, a, "198.51.100.0/24", "")
	require.NoError(t, a.ReleasePool(t.Context(), gone.ID))
	for range 300 {
		next(t, a, p.ID)
	}
	for i := 1; i < 300; i += 3 {
		release(t, a, p.ID, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String())
	}
	prefer(t, a, p.ID, "10.200.0.1")
	prefer(t, a, q.ID, "2001:db8:ffff::1")
	next(t, a, q.ID)
	next(t, a, r.ID)
	snap := snapshot(t, a)

	b := newAllocator(t)
	subnetPool(t, b, "10.0.0.0/24", "") // replaced by the restore
	require.NoError(t, b.Restore(snap))
	assert.Equal(t, a.Pools(), b.Pools())
	assert.Equal(t, snap, snapshot(t, b))

	// Both go on identically, and nothing allocated before is handed out.
	for range 400 {
		x, y := next(t, a, p.ID), next(t, b, p.ID)
		require.Equal(t, x, y)
	}
	assert.Equal(t, next(t, a, q.ID), next(t, b, q.ID))
	for _, held := range []string{"10.200.0.1", "10.1.0.3"} {
		_, err := b.RequestAddress(t.Context(), p.ID, ipam.AddressRequest{Preferred: addr(held)})
		require.ErrorIs(t, err, errdefs.ErrExists, held)
	}
	_, err := b.RequestAddress(t.Context(), q.ID, ipam.AddressRequest{Preferred: addr("2001:db8:ffff::1")})
	require.ErrorIs(t, err, errdefs.ErrExists)
	assert.Equal(t, addr("192.0.2.1"), next(t, b, r.ID))
	// Pool IDs are not reused after a restore.
	s := subnetPool(t, b, "198.51.100.0/24", "")
	assert.NotEqual(t, gone.ID, s.ID)

	// An empty allocator's snapshot empties an allocator.
	require.NoError(t, b.Restore(snapshot(t, newAllocator(t))))
	assert.Empty(t, b.Pools())
}

func TestSnapshotSizeFollowsRuns(t *testing.T) {
	a := newAllocator(t)
	p := subnetPool(t, a, "10.0.0.0/8", "")
	for range 100000 {
		next(t, a, p.ID)
	}
	assert.Less(t, len(snapshot(t, a)), 100, "100,000 consecutive addresses are one run")
}

func TestRestoreErrors(t *testing.T) {
	good := func() []byte {
		a := newAllocator(t)
		p := subnetPool(t, a, "10.0.0.0/24", "")
		next(t, a, p.ID)
		return snapshot(t, a)
	}()
	for _, tc := range []struct {
		name string
		data []byte
		msg  string
	}{
		{"empty", nil, "not an ipam snapshot"},
		{"other data", []byte(`{"pools":[]}`), "not an ipam snapshot"},
		{"future version", append([]byte("cnm-ipam\x02"), good[9:]...), "snapshot format version 2 is not supported"},
		{"truncated", good[:len(good)-3], "snapshot is truncated"},
		{"trailing bytes", append(append([]byte{}, good...), 0), "1 bytes after the end of the snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAllocator(t)
			p := subnetPool(t, a, "192.0.2.0/24", "")
			before := snapshot(t, a)
			err := a.Restore(tc.data)
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			assert.ErrorContains(t, err, tc.msg)
			assert.Equal(t, before, snapshot(t, a), "a failed restore changes nothing")
			next(t, a, p.ID)
		})
	}

	a, err := ipam.Open(t.Context(), ipam.Config{Store: &ipam.MemStore{}})
	require.NoError(t, err)
	require.ErrorIs(t, a.Restore(good), errdefs.ErrNotSupported)
}
