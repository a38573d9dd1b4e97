package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
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
// kernel work with the same result, straight through osl: a namespace, one
// RTM_NEWLINK for the veth pair (peer made inside, host end on the bridge
// and up), the address, link up and the default route.
func BenchmarkFloorJoin(b *testing.B) {
	ctx := context.Background()
	host := cnmtest.NewHostNS(b)
	br, err := host.NS.AddBridge(ctx, osl.BridgeSpec{Name: "br-floor"})
	if err != nil {
		b.Fatal(err)
	}
	if err := host.NS.AddAddress(ctx, br, netip.MustParsePrefix("10.128.0.1/16")); err != nil {
		b.Fatal(err)
	}
	if err := host.NS.SetLinkUp(ctx, br); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	addr := netip.MustParseAddr("10.128.0.1")
	b.ResetTimer()
	for i := range b.N {
		addr = addr.Next()
		ns, err := osl.NewNamespace(ctx, filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		err = host.NS.AddVeth(ctx, osl.VethSpec{HostName: fmt.Sprintf("vf%d", i), PeerName: "eth0", PeerNS: ns, MasterIndex: br})
		if err != nil {
			b.Fatal(err)
		}
		l, err := ns.LinkByName(ctx, "eth0")
		if err != nil {
			b.Fatal(err)
		}
		if err := ns.AddAddress(ctx, l.Index, netip.PrefixFrom(addr, 16)); err != nil {
			b.Fatal(err)
		}
		if err := ns.SetLinkUp(ctx, l.Index); err != nil {
			b.Fatal(err)
		}
		if err := ns.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.128.0.1"), LinkIndex: l.Index}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := ns.Delete(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
