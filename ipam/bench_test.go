package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/seed53641549/cnm/ipam"
)

// BenchmarkRequestRelease allocates a dynamic address and releases it again,
// on pools of very different sizes: the cost must not depend on the size.
func BenchmarkRequestRelease(b *testing.B) {
	for _, bc := range []struct {
		name, subnet string
		held         int // addresses allocated before the loop
	}{
		{"slash24", "10.0.0.0/24", 0},
		{"slash24-200-held", "10.0.0.0/24", 200},
		{"slash8", "10.0.0.0/8", 0},
		{"slash8-10000-held", "10.0.0.0/8", 10000},
		{"ipv6-slash64", "fd00::/64", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a := newAllocator(b)
			p := subnetPool(b, a, bc.subnet, "")
			for range bc.held {
				next(b, a, p.ID)
			}
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

// BenchmarkRequestPoolDefault takes a default pool and releases it, with 100
// pools already held at the start of the default pools.
func BenchmarkRequestPoolDefault(b *testing.B) {
	a := newAllocator(b, ipam.DefaultPool{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 24})
	ctx := b.Context()
	for range 100 {
		if _, err := a.RequestPool(ctx, ipam.PoolRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		p, err := a.RequestPool(ctx, ipam.PoolRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if err := a.ReleasePool(ctx, p.ID); err != nil {
			b.Fatal(err)
		}
	}
}
