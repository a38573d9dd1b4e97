package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/floor"
)

// BenchmarkSandboxJoin measures one container's setup through the public
// API: NewSandbox + CreateEndpoint + Join on a bridge network. Teardown
// (sandbox Delete) runs outside the timer.
func BenchmarkSandboxJoin(b *testing.B) {
	ctx := context.Background()
	ctrl, _ := cnmtest.NewController(b)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "bench", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.128.0.0/16")}))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("c%d", i)
		sb, err := ctrl.NewSandbox(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		ep, err := nw.CreateEndpoint(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		if err := ep.Join(ctx, sb); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkFloorJoin is the baseline for BenchmarkSandboxJoin: the least
// kernel work with the same result (internal/floor), in the same run.
func BenchmarkFloorJoin(b *testing.B) {
	ctx := context.Background()
	host := cnmtest.NewHostNS(b)
	nw, err := floor.NewNetwork(ctx, host.NS, "br-floor", netip.MustParsePrefix("10.128.0.1/16"), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		c, err := nw.Setup(ctx, i)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Teardown(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
