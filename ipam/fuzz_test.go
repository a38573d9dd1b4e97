package ipam_test

import (
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
}

// model is a deliberately naive allocator: it lists every address of the
// subnet and scans them.
type model struct {
	subnet   netip.Prefix
	all      []netip.Addr // every address of the subnet, in order
	dynamic  []netip.Addr // the addresses of the range, in order
	reserved map[netip.Addr]bool
	alloc    map[netip.Addr]bool
	cursor   int // index in dynamic of the last dynamic allocation, or -1
}

func newModel(subnet, rng netip.Prefix) *model {
	m := &model{subnet: subnet, reserved: map[netip.Addr]bool{}}
	if !rng.IsValid() {
		rng = subnet
	}
	for a := subnet.Addr(); a.IsValid() && subnet.Contains(a); a = a.Next() {
		m.all = append(m.all, a)
		if rng.Contains(a) {
			m.dynamic = append(m.dynamic, a)
		}
	}
	first, last := m.all[0], m.all[len(m.all)-1]
	switch {
	case subnet.Addr().Is4() && subnet.Bits() <= 30:
		m.reserved[first], m.reserved[last] = true, true
	case subnet.Addr().Is6() && subnet.Bits() <= 126:
		m.reserved[first] = true
	}
	m.reset()
	return m
}

func (m *model) reset() {
	m.alloc = map[netip.Addr]bool{}
	m.cursor = -1
}

// next returns the next-fit address, or false when none is free.
func (m *model) next() (netip.Addr, bool) {
	for k := 1; k <= len(m.dynamic); k++ {
		i := (m.cursor + k) % len(m.dynamic)
		if a := m.dynamic[i]; !m.reserved[a] && !m.alloc[a] {
			m.cursor = i
			m.alloc[a] = true
			return a, true
		}
	}
	return netip.Addr{}, false
}

// pick turns a fuzz byte into an address: one of the subnet, or one just
// outside it, or one of the other family.
func (m *model) pick(b byte) netip.Addr {
	switch i := int(b) % (len(m.all) + 2); {
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

// FuzzAllocator drives random request and release sequences on a small pool
// and checks every result against the model.
func FuzzAllocator(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 2, 1, 0, 0, 1, 1, 0, 0, 2, 3, 0, 0})
	f.Add([]byte{6, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0})
	f.Add([]byte{12, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 1, 2})
	f.Add([]byte{9, 1, 7, 1, 8, 0, 0, 0, 0, 2, 8, 0, 0, 2, 9, 1, 9})
	f.Add([]byte{15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 0, 0})

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		cfg := fuzzPools[int(data[0])%len(fuzzPools)]
		subnet, rng := prefix(cfg.subnet), netip.Prefix{}
		if cfg.rng != "" {
			rng = prefix(cfg.rng)
		}
		a := newAllocator(t)
		p := subnetPool(t, a, cfg.subnet, cfg.rng)
		m := newModel(subnet, rng)
		ctx := t.Context()

		for i := 1; i+1 < len(data); i += 2 {
			arg := data[i+1]
			switch op := data[i] % 4; op {
			case 0: // dynamic request
				got, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
				want, ok := m.next()
				if !ok {
					require.ErrorIs(t, err, ipam.ErrPoolExhausted, "step %d", i)
					require.ErrorContains(t, err, cfg.subnet)
					require.False(t, got.IsValid())
					continue
				}
				require.NoError(t, err, "step %d", i)
				require.Equal(t, want, got, "step %d", i)

			case 1: // preferred request
				want := m.pick(arg)
				got, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: want})
				switch {
				case !subnet.Contains(want), m.reserved[want]:
					require.ErrorIs(t, err, errdefs.ErrInvalid, "step %d: %s", i, want)
				case m.alloc[want]:
					require.ErrorIs(t, err, errdefs.ErrExists, "step %d: %s", i, want)
				default:
					require.NoError(t, err, "step %d: %s", i, want)
					require.Equal(t, want, got)
					m.alloc[want] = true
					continue
				}
				require.ErrorContains(t, err, want.String())
				require.False(t, got.IsValid())

			case 2: // release
				addr := m.pick(arg)
				err := a.ReleaseAddress(ctx, p.ID, addr)
				if !m.alloc[addr] {
					require.ErrorIs(t, err, errdefs.ErrNotFound, "step %d: %s", i, addr)
					require.ErrorContains(t, err, addr.String())
					continue
				}
				require.NoError(t, err, "step %d: %s", i, addr)
				delete(m.alloc, addr)

			case 3: // occasionally start over with a fresh pool of the same subnet
				if arg%8 != 0 {
					continue
				}
				require.NoError(t, a.ReleasePool(ctx, p.ID))
				old := p.ID
				p = subnetPool(t, a, cfg.subnet, cfg.rng)
				require.NotEqual(t, old, p.ID)
				err := a.ReleaseAddress(ctx, old, m.pick(0))
				require.ErrorIs(t, err, errdefs.ErrNotFound)
				m.reset()
			}
		}

		// Finally every address the model holds is held, and no other.
		for _, addr := range m.all {
			_, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr})
			switch {
			case m.reserved[addr]:
				require.ErrorIs(t, err, errdefs.ErrInvalid, addr.String())
			case m.alloc[addr]:
				require.ErrorIs(t, err, errdefs.ErrExists, addr.String())
			default:
				require.NoError(t, err, addr.String())
			}
		}
		require.Equal(t, []ipam.Pool{p}, a.Pools())
	})
}
