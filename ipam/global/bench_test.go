package global

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/seed53641549/cnm/ipam"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

// BenchmarkAllocate compares, on one real etcd, the per-address cost of
// allocating with block affinity (etcd is asked once per block of 64) with
// the cost of one etcd compare-and-swap per address (the floor of any
// design that writes each address to etcd). In block-affinity and
// cas-per-address, every 4096 allocations all addresses are released
// (untimed), so blocks are returned and claimed again as containers come
// and go; in-block-local measures a release and a request inside a held
// block, which send nothing to etcd.
//
//	go test -run '^$' -bench Allocate -count 5 ./ipam/global/
func BenchmarkAllocate(b *testing.B) {
	srv := etcdtest.Start(b, etcdtest.Options{})
	h := newHost(b, srv, "bench", 30*time.Second)
	ctx := b.Context()
	const batch = 4096

	b.Run("block-affinity", func(b *testing.B) {
		p, err := h.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.128.0.0/16")})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = h.alloc.ReleasePool(ctx, p.ID) }()
		held := make([]netip.Addr, 0, batch)
		b.ResetTimer()
		for range b.N {
			if len(held) == batch {
				b.StopTimer()
				for _, a := range held {
					if err := h.alloc.ReleaseAddress(ctx, p.ID, a); err != nil {
						b.Fatal(err)
					}
				}
				held = held[:0]
				b.StartTimer()
			}
			a, err := h.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, a)
		}
	})

	// The per-address path alone: a block is held (one address keeps it),
	// and each op frees and takes an address in it, with no etcd request.
	b.Run("in-block-local", func(b *testing.B) {
		p, err := h.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.130.0.0/16")})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = h.alloc.ReleasePool(ctx, p.ID) }()
		if _, err := h.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil {
			b.Fatal(err)
		}
		a, err := h.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			if err := h.alloc.ReleaseAddress(ctx, p.ID, a); err != nil {
				b.Fatal(err)
			}
			if a, err = h.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("cas-per-address", func(b *testing.B) {
		base := netip.MustParseAddr("10.129.0.0")
		n := 0
		if _, err := h.st.TxnIf(ctx, nil, etcdstore.Op{Key: "bench/addrs/", Delete: true, Prefix: true}); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			if n == batch {
				b.StopTimer()
				if _, err := h.st.TxnIf(ctx, nil, etcdstore.Op{Key: "bench/addrs/", Delete: true, Prefix: true}); err != nil {
					b.Fatal(err)
				}
				n = 0
				b.StartTimer()
			}
			n++
			key := fmt.Sprintf("bench/addrs/%s", addrAt(base, uint64(n)))
			if _, err := h.st.CompareAndSwap(ctx, key, 0, []byte("bench")); err != nil {
				b.Fatal(err)
			}
		}
	})
}
