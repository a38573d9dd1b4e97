package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"github.com/seed53641549/cnm/ipam"
)

// BenchmarkRequestRelease allocates a dynamic address and releases it again,
// on pools of very different sizes and fills: the cost must depend on
// neither. "fragmented" pools hold every other address of their start, so
// that each request joins two runs and each release splits one, in a B-tree
// of thousands of runs. Compare with BenchmarkBitmapFloor in the same run.
func BenchmarkRequestRelease(b *testing.B) {
	for _, bc := range []struct {
		name, subnet string
		held         int  // addresses allocated before the loop
		fragmented   bool // held addresses are every other one, not consecutive
	}{
		{"slash24", "10.0.0.0/24", 0, false},
		{"slash24-200-held", "10.0.0.0/24", 200, false},
		{"slash16", "10.0.0.0/16", 0, false},
		{"slash16-30000-held-fragmented", "10.0.0.0/16", 30000, true},
		{"slash8", "10.0.0.0/8", 0, false},
		{"slash8-10000-held", "10.0.0.0/8", 10000, false},
		{"slash8-1M-held-fragmented", "10.0.0.0/8", 1000000, true},
		{"ipv6-slash64", "fd00::/64", 0, false},
		{"ipv6-slash64-30000-held-fragmented", "fd00::/64", 30000, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a := newAllocator(b)
			p := subnetPool(b, a, bc.subnet, "")
			hold(b, a, p, bc.held, bc.fragmented)
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				got, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
				if err != nil {
					b.Fatal(err)
				}
				if err := a.ReleaseAddress(ctx, p.ID, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// hold allocates n addresses in p: the first n dynamic ones, or, when
// fragmented, every other address from the second on.
func hold(b *testing.B, a *ipam.LocalAllocator, p ipam.Pool, n int, fragmented bool) {
	b.Helper()
	ctx := b.Context()
	x := p.Subnet.Addr().Next()
	for range n {
		req := ipam.AddressRequest{}
		if fragmented {
			req.Preferred = x
			x = x.Next().Next()
		}
		if _, err := a.RequestAddress(ctx, p.ID, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPerAddress allocates 1,000,000 addresses in a /8 and
// reports the heap the allocator holds afterwards, per address (B/addr):
// consecutive ones from next-fit requests, and every other address (each
// its own run: the worst case for the run representation).
func BenchmarkMemoryPerAddress(b *testing.B) {
	const n = 1000000
	for _, bc := range []struct {
		name       string
		fragmented bool
	}{
		{"slash8-1M-next-fit", false},
		{"slash8-1M-every-other", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var perAddr float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				a := newAllocator(b)
				p := subnetPool(b, a, "10.0.0.0/8", "")
				hold(b, a, p, n, bc.fragmented)
				runtime.GC()
				runtime.ReadMemStats(&after)
				runtime.KeepAlive(a)
				perAddr = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
			}
			b.ReportMetric(perAddr, "B/addr")
		})
	}
}

// BenchmarkRequestPoolDefault takes a default pool and releases it, with
// pools already held at the start of the default pools: consecutive ones
// (as default requests leave them), or explicit /25s, one in each of the
// first candidate /24s, which no merge can join (the worst case: one jump
// per held pool).
func BenchmarkRequestPoolDefault(b *testing.B) {
	for _, bc := range []struct {
		name  string
		held  int
		apart bool
	}{
		{"100-held", 100, false},
		{"1000-held", 1000, false},
		{"1000-held-apart", 1000, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a := newAllocator(b, ipam.DefaultPool{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 24})
			ctx := b.Context()
			for i := range bc.held {
				req := ipam.PoolRequest{}
				if bc.apart {
					req.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 25)
				}
				if _, err := a.RequestPool(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			avoid := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("10.200.0.0/16")}
			b.ReportAllocs()
			for b.Loop() {
				p, err := a.RequestPool(ctx, ipam.PoolRequest{Avoid: avoid})
				if err != nil {
					b.Fatal(err)
				}
				if err := a.ReleasePool(ctx, p.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// lockedBitmap puts the bitmap floor behind what every allocator call pays
// whatever its data structure: a context check, a mutex and a lookup of the
// pool by ID. The gap between it and BenchmarkRequestRelease is the cost of
// the run tree; the gap between it and the bare bitmap is the cost of the
// API.
type lockedBitmap struct {
	mu    sync.Mutex
	pools map[string]*bitmapAlloc
}

func (l *lockedBitmap) request(ctx context.Context, id string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.pools[id]
	if !ok {
		return 0, fmt.Errorf("no pool %q", id)
	}
	off, ok := m.request()
	if !ok {
		return 0, fmt.Errorf("pool %q exhausted", id)
	}
	return off, nil
}

func (l *lockedBitmap) release(ctx context.Context, id string, off uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.pools[id]
	if !ok {
		return fmt.Errorf("no pool %q", id)
	}
	m.release(off)
	return nil
}

func BenchmarkBitmapFloorLocked(b *testing.B) {
	for _, bc := range []struct {
		name string
		size uint64
	}{
		{"slash24", 1 << 8},
		{"slash16", 1 << 16},
	} {
		b.Run(bc.name, func(b *testing.B) {
			id := "local/10.0.0.0/16#1"
			l := &lockedBitmap{pools: map[string]*bitmapAlloc{id: newBitmapAlloc(bc.size), "other": newBitmapAlloc(bc.size)}}
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				off, err := l.request(ctx, id)
				if err != nil {
					b.Fatal(err)
				}
				if err := l.release(ctx, id, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
