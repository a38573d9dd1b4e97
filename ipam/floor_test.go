package ipam_test

import (
	"math/bits"
	"testing"
)

// bitmapAlloc is the floor the allocator's speed is measured against: a
// plain fixed-size bitmap of one pool, next-fit, with no lock, no pool
// lookup, no context and no address conversion. It needs memory for every
// address of the pool, which is why the allocator does not use it (a /8
// takes 2 MiB, an IPv6 /64 cannot be held at all). Benchmark only.
type bitmapAlloc struct {
	words  []uint64
	size   uint64 // addresses in the pool
	cursor uint64 // last offset handed out
}

// newBitmapAlloc returns a bitmap of size addresses with the first and the
// last (network and broadcast) marked as taken.
func newBitmapAlloc(size uint64) *bitmapAlloc {
	b := &bitmapAlloc{words: make([]uint64, (size+63)/64), size: size, cursor: 0}
	b.words[0] |= 1
	b.words[(size-1)/64] |= 1 << ((size - 1) % 64)
	return b
}

// request returns the first free offset after the cursor, wrapping, or false.
func (b *bitmapAlloc) request() (uint64, bool) {
	start := b.cursor + 1
	if start >= b.size {
		start = 0
	}
	w := start / 64
	// The first word, from start on.
	if free := ^b.words[w] &^ (1<<(start%64) - 1); free != 0 {
		return b.take(w, free)
	}
	for i := 1; i <= len(b.words); i++ {
		w++
		if w == uint64(len(b.words)) {
			w = 0
		}
		if free := ^b.words[w]; free != 0 {
			return b.take(w, free)
		}
	}
	return 0, false
}

func (b *bitmapAlloc) take(w, free uint64) (uint64, bool) {
	off := w*64 + uint64(bits.TrailingZeros64(free))
	if off >= b.size {
		return 0, false // only in a pool whose size is not a multiple of 64
	}
	b.words[w] |= 1 << (off % 64)
	b.cursor = off
	return off, true
}

func (b *bitmapAlloc) release(off uint64) {
	b.words[off/64] &^= 1 << (off % 64)
}

// BenchmarkBitmapFloor is request+release on the bitmap floor, to run in the
// same run as BenchmarkRequestRelease.
func BenchmarkBitmapFloor(b *testing.B) {
	for _, bc := range []struct {
		name string
		size uint64
	}{
		{"slash24", 1 << 8},
		{"slash16", 1 << 16},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := newBitmapAlloc(bc.size)
			b.ReportAllocs()
			for b.Loop() {
				off, ok := m.request()
				if !ok {
					b.Fatal("bitmap exhausted")
				}
				m.release(off)
			}
		})
	}
}

func TestBitmapFloor(t *testing.T) {
	m := newBitmapAlloc(256)
	seen := map[uint64]bool{}
	for range 254 {
		off, ok := m.request()
		if !ok || off == 0 || off == 255 || seen[off] {
			t.Fatalf("request: %d %t", off, ok)
		}
		seen[off] = true
	}
	if _, ok := m.request(); ok {
		t.Fatal("a full bitmap handed out an address")
	}
	m.release(7)
	if off, _ := m.request(); off != 7 {
		t.Fatalf("got %d, want 7", off)
	}
}
