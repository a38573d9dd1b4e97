package global

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/seed53641549/cnm/ipam"
)

// TestOwnPoolsAndIDs: each host lists the pools and VXLAN IDs it asked
// for that still exist, and only those.
func TestOwnPoolsAndIDs(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	pool := func(h *host, subnet string) ipam.Pool {
		t.Helper()
		p, err := h.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix(subnet)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	vni := func(h *host) uint32 {
		t.Helper()
		id, err := h.vxlan.Request(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	p0, p1, gone := pool(hs[0], "10.20.0.0/24"), pool(hs[1], "10.20.0.0/24"), pool(hs[0], "10.22.0.0/24")
	if err := hs[1].alloc.ReleasePool(ctx, gone.ID); err != nil { // released by another host
		t.Fatal(err)
	}
	v0, v1, vgone := vni(hs[0]), vni(hs[1]), vni(hs[0])
	if err := hs[1].vxlan.Release(ctx, vgone); err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{{p0.ID}, {p1.ID}} {
		got, err := hs[i].alloc.OwnPools(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("host %d: own pools %v, want %v", i, got, want)
		}
	}
	for i, want := range [][]uint32{{v0}, {v1}} {
		got, err := hs[i].vxlan.OwnIDs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("host %d: own vxlan ids %v, want %v", i, got, want)
		}
	}
}
