package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/floor"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// timedStore sums, in *spent, the wall time of the writes that go through it.
type timedStore struct {
	store.Store
	spent *time.Duration
}

func (s timedStore) Txn(ctx context.Context, ops ...store.Op) error {
	start := time.Now()
	err := s.Store.Txn(ctx, ops...)
	*s.spent += time.Since(start)
	return err
}

// BenchmarkSandboxJoin measures one container's setup through the public
// API: NewSandbox + CreateEndpoint + Join on a bridge network. Teardown
// (sandbox Delete) runs outside the timer. It also reports the share of the
// setup spent writing records to the store (store-%).
func BenchmarkSandboxJoin(b *testing.B) {
	ctx := context.Background()
	ctrl, _ := cnmtest.NewController(b)
	var spent time.Duration
	cnm.WrapStores(ctrl, func(s store.Store) store.Store { return timedStore{Store: s, spent: &spent} })
	nw, err := ctrl.NewNetwork(ctx, "bridge", "bench", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.128.0.0/16")}))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		sb := setupContainer(b, ctrl, nw, fmt.Sprintf("c%d", i))
		b.StopTimer()
		setup := spent
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		spent = setup // teardown's writes are not part of setup
		b.StartTimer()
	}
	b.ReportMetric(100*float64(spent)/float64(b.Elapsed()), "store-%")
}

// setupContainer makes one container the way a runtime does: NewSandbox,
// CreateEndpoint and Join on nw, both named name.
func setupContainer(b *testing.B, ctrl *cnm.Controller, nw *cnm.Network, name string) *cnm.Sandbox {
	ctx := context.Background()
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
	return sb
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

// BenchmarkLeave measures Leave of one joined endpoint through the public
// API. The interface is taken out of use at once and deleted in the
// background, so the figure is the caller's wait, not the kernel's. Setup
// and the final Settle run outside the timer. Compare BenchmarkFloorLeave.
func BenchmarkLeave(b *testing.B) {
	ctx := context.Background()
	ctrl, _ := cnmtest.NewController(b)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "bench", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.129.0.0/16")}))
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for i := range b.N {
		sb := setupContainer(b, ctrl, nw, fmt.Sprintf("c%d", i))
		ep := sb.Endpoints()[0]
		b.StartTimer()
		if err := ep.Leave(ctx, sb); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		if err := ep.Delete(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if err := ctrl.Settle(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFloorLeave is the baseline for BenchmarkLeave: one RTM_DELLINK
// of the container's veth pair, which is what leaving costs when the caller
// waits for the kernel.
func BenchmarkFloorLeave(b *testing.B) {
	ctx := context.Background()
	host := cnmtest.NewHostNS(b)
	nw, err := floor.NewNetwork(ctx, host.NS, "br-floor", netip.MustParsePrefix("10.129.0.1/16"), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for i := range b.N {
		c, err := nw.Setup(ctx, i)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := host.NS.DeleteLink(ctx, c.HostIf); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Teardown(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewSandbox measures NewSandbox alone: a namespace, its hosts and
// resolv.conf files and its record. Deletion runs outside the timer. The
// run dir is under TMPDIR: run it once on a tmpfs and once on a disk.
// Compare BenchmarkFloorNamespace.
func BenchmarkNewSandbox(b *testing.B) {
	ctx := context.Background()
	ctrl, _ := cnmtest.NewController(b)
	b.ResetTimer()
	for i := range b.N {
		sb, err := ctrl.NewSandbox(ctx, fmt.Sprintf("c%d", i))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkFloorNamespace is the baseline for BenchmarkNewSandbox: one
// namespace made in process (unshare and bind mount), loopback up.
func BenchmarkFloorNamespace(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	b.ResetTimer()
	for i := range b.N {
		ns, err := osl.NewNamespace(ctx, filepath.Join(dir, fmt.Sprintf("ns%d", i)))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := ns.Delete(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
