package ipam_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

// fuzzPools are the small pools FuzzAllocator drives: small enough for the
// model to enumerate, and covering ranges, /31, /32, IPv6 and the ends of the
// address spaces.
var fuzzPools = []struct{ subnet, rng string }{
	{"10.0.0.0/29", ""},
	{"10.0.0.0/29", "10.0.0.4/30"},
	{"10.0.0.0/28", "10.0.0.0/30"},
	{"10.0.0.0/28", "10.0.0.12/30"},
	{"10.0.0.0/30", ""},
	{"10.0.0.0/31", ""},
	{"10.0.0.5/32", ""},
	{"0.0.0.0/29", ""},
	{"255.255.255.248/29", ""},
	{"255.255.255.240/28", "255.255.255.248/29"},
	{"fd00::/125", ""},
	{"fd00::/126", ""},
	{"fd00::/127", ""},
	{"fd00::/124", "fd00::8/125"},
	{"fd00::/124", "fd00::/126"},
	{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/125", ""},
	// Large enough for many runs, so that the B-tree has several levels.
	{"10.0.0.0/21", ""},
	{"10.0.0.0/20", "10.0.4.0/22"},
	{"fd00::/117", ""},
	{"fd00::/116", "fd00::400/118"},
}

// model is a deliberately naive allocator: it lists every address of the
// subnet and scans them.
type model struct {
	subnet   netip.Prefix
	all      []netip.Addr       // every address of the subnet, in order
	index    map[netip.Addr]int // position in all
	dynamic  []int              // positions in all of the addresses of the range, in order
	reserved []bool             // by position in all
	alloc    []bool             // by position in all
	cursor   int                // index in dynamic of the last dynamic allocation, or -1
}

func newModel(subnet, rng netip.Prefix) *model {
	m := &model{subnet: subnet, index: map[netip.Addr]int{}}
	if !rng.IsValid() {
		rng = subnet
	}
	for a := subnet.Addr(); a.IsValid() && subnet.Contains(a); a = a.Next() {
		m.index[a] = len(m.all)
		if rng.Contains(a) {
			m.dynamic = append(m.dynamic, len(m.all))
		}
		m.all = append(m.all, a)
	}
	m.reserved = make([]bool, len(m.all))
	switch {
	case subnet.Addr().Is4() && subnet.Bits() <= 30:
		m.reserved[0], m.reserved[len(m.all)-1] = true, true
	case subnet.Addr().Is6() && subnet.Bits() <= 126:
		m.reserved[0] = true
	}
	m.reset()
	return m
}

func (m *model) reset() {
	m.alloc = make([]bool, len(m.all))
	m.cursor = -1
}

// isReserved and isAlloc report on any address, in the subnet or not.
func (m *model) isReserved(a netip.Addr) bool {
	i, ok := m.index[a]
	return ok && m.reserved[i]
}

func (m *model) isAlloc(a netip.Addr) bool {
	i, ok := m.index[a]
	return ok && m.alloc[i]
}

// set marks a, which must be in the subnet, allocated or free.
func (m *model) set(a netip.Addr, held bool) { m.alloc[m.index[a]] = held }

// next returns the next-fit address, or false when none is free.
func (m *model) next() (netip.Addr, bool) {
	for k := 1; k <= len(m.dynamic); k++ {
		d := (m.cursor + k) % len(m.dynamic)
		if i := m.dynamic[d]; !m.reserved[i] && !m.alloc[i] {
			m.cursor = d
			m.alloc[i] = true
			return m.all[i], true
		}
	}
	return netip.Addr{}, false
}

// pick turns a fuzz number into an address: one of the subnet, or one just
// outside it, or one of the other family.
func (m *model) pick(n int) netip.Addr {
	switch i := n % (len(m.all) + 2); {
	case i < len(m.all):
		return m.all[i]
	case i == len(m.all):
		if out := m.all[len(m.all)-1].Next(); out.IsValid() {
			return out
		}
		return m.all[0].Prev()
	default:
		if m.subnet.Addr().Is4() {
			return netip.MustParseAddr("fd00::1")
		}
		return netip.MustParseAddr("10.0.0.1")
	}
}

// FuzzAllocator drives random request and release sequences on a pool and
// checks every result against the model. Each step is three bytes: an
// operation and a 16-bit argument. Besides requests and releases, steps
// allocate bursts, release every k-th address (fragmenting the pool into
// many runs), start over with a fresh pool, carry the state over to a new
// allocator through Snapshot and Restore, or reopen the allocator from its
// store. The first byte picks the pool and whether the allocator writes
// through to a store.
func FuzzAllocator(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 3, 0, 0})
	f.Add([]byte{6, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0})
	f.Add([]byte{12, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 1, 2})
	f.Add([]byte{9, 1, 0, 7, 1, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0, 8, 0, 0, 0, 2, 0, 9, 1, 0, 9})
	f.Add([]byte{16, 4, 0, 200, 4, 0, 255, 5, 0, 0, 1, 0, 7, 3, 0, 1, 0, 0, 0, 3, 0, 2, 1, 3, 0})
	f.Add([]byte{0x11 + 16, 4, 0, 255, 5, 0, 1, 3, 0, 10, 0, 0, 0, 2, 1, 0, 3, 0, 2})
	f.Add([]byte{18, 4, 0, 100, 4, 0, 100, 5, 0, 2, 1, 0, 5, 3, 0, 1, 4, 0, 30})
	f.Add([]byte{19 + 32, 4, 0, 60, 5, 0, 0, 3, 0, 2, 0, 0, 0, 4, 0, 40, 5, 0, 1})

	f.Fuzz(checkAgainstModel)
}

// TestAllocatorRandomSequences runs checkAgainstModel on long pseudo-random
// inputs, every pool and both store settings, so that plain go test covers
// deep trees and many steps whatever the fuzzing budget.
func TestAllocatorRandomSequences(t *testing.T) {
	if testing.Short() {
		t.Skip("long random sequences")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2 * 2 * len(fuzzPools) {
		data := make([]byte, 1+3*400)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		// Bursts and stride releases often, to fragment the big pools.
		for j := 1; j+2 < len(data); j += 3 {
			if data[j]%6 == 3 && data[j+2]%4 == 0 && rng.IntN(4) > 0 {
				data[j] = 4 // few fresh pools
			}
		}
		data[0] = byte(i%len(fuzzPools) + 32*(i/len(fuzzPools)%2))
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkAgainstModel(t, data) })
	}
}

// checkAgainstModel is FuzzAllocator's body: see there.
func checkAgainstModel(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	cfg := fuzzPools[int(data[0])%len(fuzzPools)]
	withStore := data[0]/32%2 == 1
	subnet, rng := prefix(cfg.subnet), netip.Prefix{}
	if cfg.rng != "" {
		rng = prefix(cfg.rng)
	}
	ctx := t.Context()
	var store *ipam.MemStore
	open := func() *ipam.LocalAllocator {
		if !withStore {
			return newAllocator(t)
		}
		a, err := ipam.Open(ctx, ipam.Config{Store: store})
		require.NoError(t, err)
		return a
	}
	if withStore {
		store = &ipam.MemStore{}
	}
	a := open()
	p := subnetPool(t, a, cfg.subnet, cfg.rng)
	m := newModel(subnet, rng)

	dynamic := func(step int) {
		got, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		want, ok := m.next()
		if !ok {
			require.ErrorIs(t, err, ipam.ErrPoolExhausted, "step %d", step)
			require.ErrorContains(t, err, cfg.subnet)
			require.False(t, got.IsValid())
			return
		}
		require.NoError(t, err, "step %d", step)
		require.Equal(t, want, got, "step %d", step)
	}

	for i := 1; i+2 < len(data); i += 3 {
		arg := int(data[i+1])<<8 | int(data[i+2])
		switch op := data[i] % 6; op {
		case 0: // dynamic request
			dynamic(i)

		case 1: // preferred request
			want := m.pick(arg)
			got, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: want})
			switch {
			case !subnet.Contains(want), m.isReserved(want):
				require.ErrorIs(t, err, errdefs.ErrInvalid, "step %d: %s", i, want)
			case m.isAlloc(want):
				require.ErrorIs(t, err, errdefs.ErrExists, "step %d: %s", i, want)
			default:
				require.NoError(t, err, "step %d: %s", i, want)
				require.Equal(t, want, got)
				m.set(want, true)
				continue
			}
			require.ErrorContains(t, err, want.String())
			require.False(t, got.IsValid())

		case 2: // release
			addr := m.pick(arg)
			err := a.ReleaseAddress(ctx, p.ID, addr)
			if !m.isAlloc(addr) {
				require.ErrorIs(t, err, errdefs.ErrNotFound, "step %d: %s", i, addr)
				require.ErrorContains(t, err, addr.String())
				continue
			}
			require.NoError(t, err, "step %d: %s", i, addr)
			m.set(addr, false)

		case 3: // start over, or carry the state over
			switch arg % 4 {
			case 0: // a fresh pool of the same subnet
				require.NoError(t, a.ReleasePool(ctx, p.ID))
				old := p.ID
				p = subnetPool(t, a, cfg.subnet, cfg.rng)
				require.NotEqual(t, old, p.ID)
				err := a.ReleaseAddress(ctx, old, m.pick(0))
				require.ErrorIs(t, err, errdefs.ErrNotFound)
				m.reset()
			case 1: // snapshot, and go on in a new allocator
				if withStore {
					continue
				}
				snap, err := a.Snapshot()
				require.NoError(t, err)
				a = newAllocator(t)
				require.NoError(t, a.Restore(snap))
			case 2: // reopen from the store
				if withStore {
					a = open()
				}
			}
			require.Equal(t, []ipam.Pool{p}, a.Pools())

		case 4: // a burst of dynamic requests
			for range arg % 64 {
				dynamic(i)
			}

		case 5: // release every k-th allocated address, in address order
			k := 2 + arg%3
			for j, addr := range m.all {
				if m.alloc[j] && j%k == arg%k {
					require.NoError(t, a.ReleaseAddress(ctx, p.ID, addr), "step %d: %s", i, addr)
					m.alloc[j] = false
				}
			}
		}
	}

	if withStore { // the store holds exactly the allocator's state
		b := open()
		sa, err := a.Snapshot()
		require.NoError(t, err)
		sb, err := b.Snapshot()
		require.NoError(t, err)
		require.Equal(t, sa, sb)
	}

	// Finally every address the model holds is held, and no other.
	for _, addr := range m.all {
		_, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr})
		switch {
		case m.isReserved(addr):
			require.ErrorIs(t, err, errdefs.ErrInvalid, addr.String())
		case m.isAlloc(addr):
			require.ErrorIs(t, err, errdefs.ErrExists, addr.String())
		default:
			require.NoError(t, err, addr.String())
		}
	}
	require.Equal(t, []ipam.Pool{p}, a.Pools())
}

// FuzzRestore feeds arbitrary bytes to Restore: it never panics, and what it
// accepts it gives back unchanged by Snapshot.
func FuzzRestore(f *testing.F) {
	a, err := ipam.New(ipam.Config{})
	require.NoError(f, err)
	for _, s := range []string{"10.0.0.0/24", "fd00::/64"} {
		p, err := a.RequestPool(f.Context(), ipam.PoolRequest{Subnet: prefix(s), V6: prefix(s).Addr().Is6()})
		require.NoError(f, err)
		for range 3 {
			_, err := a.RequestAddress(f.Context(), p.ID, ipam.AddressRequest{})
			require.NoError(f, err)
		}
	}
	snap, err := a.Snapshot()
	require.NoError(f, err)
	f.Add(snap)
	f.Add([]byte("cnm-ipam\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newAllocator(t)
		if err := b.Restore(data); err != nil {
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			require.Empty(t, b.Pools())
			return
		}
		again, err := b.Snapshot()
		require.NoError(t, err)
		c := newAllocator(t)
		require.NoError(t, c.Restore(again))
		again2, err := c.Snapshot()
		require.NoError(t, err)
		require.Equal(t, again, again2)
	})
}
