package portalloc_test

import (
	"net/netip"
	"testing"

	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/portalloc"
)

// BenchmarkAllocate takes an ephemeral port and releases it again, with 0
// and with 1,000 ports already held (taken by Allocate, so they sit where
// the next-fit search passes on every wrap of the range), and with the
// default range nearly full, up to the worst case of the search: one free
// port, found after a scan of the whole range. The bind
// sub-benchmarks add the bind test in a throwaway host namespace (root
// only): a thread switch into the namespace and a socket per call.
//
//	./scripts/test.sh -run '^$' -bench Allocate -benchtime 20000x ./portalloc
func BenchmarkAllocate(b *testing.B) {
	for _, bc := range []struct {
		name string
		held int
		bind bool
	}{
		{"held=0", 0, false},
		{"held=1000", 1000, false},
		{"held=16000-of-16383", 16000, false},
		{"held=16382-of-16383", 16382, false}, // one free port: every search scans the whole range
		{"bind/held=0", 0, true},
		{"bind/held=1000", 1000, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var ns *osl.Namespace
			if bc.bind {
				ns = newHostNS(b)
			}
			a := newBindAllocator(b, ns, portalloc.Range{})
			ctx := b.Context()
			r := portalloc.Request{Proto: "tcp", HostIP: netip.IPv4Unspecified()}
			for range bc.held {
				if _, err := a.Allocate(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				p, err := a.Allocate(ctx, r)
				if err != nil {
					b.Fatal(err)
				}
				a.Release(r.Proto, r.HostIP, p)
			}
		})
	}
}
