package global

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

func addr4(s string) netip.Addr { return netip.MustParseAddr(s) }

// blockKeys lists the block keys of pool poolID, with their hosts.
func blockKeys(t *testing.T, h *host, poolID string) map[string]string {
	t.Helper()
	kvs, err := h.st.List(t.Context(), blocksPrefix+poolKey(t, poolID)+"/")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range kvs {
		out[kv.Key] = parseBlock(kv.Value).Host
	}
	return out
}

// TestRestartAdoptsBlocks: a controller restarted within its lease's TTL
// adopts the lease; its new allocators take the blocks of the old run as
// their own when it asks again for the addresses it recorded, hand out
// the rest of those blocks again without duplicates, and skip the VXLAN
// IDs recorded; other hosts, and the same host name under another lease,
// are still refused those blocks.
func TestRestartAdoptsBlocks(t *testing.T) {
	srv, hs := newHosts(t, 1)
	other := hs[0]
	ctx := t.Context()
	r := newHost(t, srv, "r", 10*time.Second)
	p, err := r.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.30.0.0/24")}) // blocks .0, .64, .128, .192
	if err != nil {
		t.Fatal(err)
	}
	if err := r.alloc.ReserveAddress(ctx, p.ID, addr4("10.30.0.1")); err != nil {
		t.Fatal(err)
	}
	var held []netip.Addr
	for range 70 { // .2-.63 and .64-.71
		a, err := r.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, a)
	}
	if held[0] != addr4("10.30.0.2") || held[69] != addr4("10.30.0.71") {
		t.Fatalf("addresses %s..%s, want 10.30.0.2..10.30.0.71", held[0], held[69])
	}
	// One in the last block, that the restarted run will not ask for again
	// (its container went while the controller was down).
	if _, err := r.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.30.0.200")}); err != nil {
		t.Fatal(err)
	}
	// And a pool the restarted run will not use at all.
	p2, err := r.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.31.0.0/26")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.alloc.RequestAddress(ctx, p2.ID, ipam.AddressRequest{Preferred: addr4("10.31.0.5")}); err != nil {
		t.Fatal(err)
	}
	// And a pool whose only block the restarted run will not ask for again.
	p3, err := r.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.32.0.0/26")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.alloc.RequestAddress(ctx, p3.ID, ipam.AddressRequest{}); err != nil {
		t.Fatal(err)
	}
	for want := uint32(4096); want < 4099; want++ {
		if id, err := r.vxlan.Request(ctx); err != nil || id != want {
			t.Fatalf("vxlan id %d, %v; want %d", id, err, want)
		}
	}

	r2 := restart(t, srv, r)
	if r2.lease.ID() != r.lease.ID() {
		t.Fatalf("adopted lease %x, want %x", r2.lease.ID(), r.lease.ID())
	}
	// The blocks are still r's: refused to another host, and to r's name
	// under another lease.
	_, err = other.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.30.0.10")})
	wantErr(t, err, errdefs.ErrExists, "10.30.0.10", `host "r"`)
	impostor := newHost(t, srv, "r", 10*time.Second)
	_, err = impostor.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.30.0.10")})
	wantErr(t, err, errdefs.ErrExists, "10.30.0.10", `host "r" under another lease`)

	// The restarted run asks again for what its records hold, but for .10
	// and .65 (their containers went meanwhile) and .200.
	gone := map[netip.Addr]bool{addr4("10.30.0.10"): true, addr4("10.30.0.65"): true}
	mine := map[netip.Addr]bool{}
	for _, a := range held {
		if gone[a] {
			continue
		}
		if got, err := r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: a}); err != nil || got != a {
			t.Fatalf("ask again for %s after the restart: %s, %v", a, got, err)
		}
		mine[a] = true
	}
	_, err = r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: held[3]})
	wantErr(t, err, errdefs.ErrExists, held[3].String(), "already allocated")
	_, err = r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.30.0.1")})
	wantErr(t, err, errdefs.ErrExists, "10.30.0.1", "reserved")
	// New addresses: the freed ones of the adopted blocks first, never one
	// asked for again, nor the gateway, nor .200's block (still r's from the
	// old run: the next block claimed is .128).
	for i := range 60 {
		a, err := r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case mine[a] || a == addr4("10.30.0.1"):
			t.Fatalf("new address %s after the restart: already held or reserved", a)
		case i == 0 && a != addr4("10.30.0.10"), i == 1 && a != addr4("10.30.0.65"), i == 2 && a != addr4("10.30.0.72"):
			t.Fatalf("new address %d after the restart is %s; want .10, .65, .72 first", i, a)
		case a.As4()[3] >= 192:
			t.Fatalf("new address %s in the last block before the .128 block is used", a)
		}
		mine[a] = true
	}
	if id, err := r2.vxlan.Request(ctx); err != nil || id != 4099 {
		t.Fatalf("vxlan id after the restart: %d, %v; want 4099 (4096-4098 are recorded)", id, err)
	}
	if err := r2.vxlan.Release(ctx, 4096); err != nil {
		t.Fatal(err)
	}
	if id, err := r2.vxlan.Request(ctx); err != nil || id != 4096 {
		t.Fatalf("vxlan id after releasing 4096: %d, %v; want 4096 again (the lowest free)", id, err)
	}
	if id, err := r2.vxlan.Request(ctx); err != nil || id != 4100 {
		t.Fatalf("next vxlan id: %d, %v; want 4100", id, err)
	}

	// A block of the old run that nothing was asked of serves a dynamic
	// request rather than the pool being exhausted (the controller's
	// records do not hold its addresses).
	if got, err := r2.alloc.RequestAddress(ctx, p3.ID, ipam.AddressRequest{}); err != nil || got != addr4("10.32.0.1") {
		t.Fatalf("dynamic address in the old run's only block: %s, %v", got, err)
	}
	_, err = other.alloc.RequestAddress(ctx, p3.ID, ipam.AddressRequest{})
	wantErr(t, err, ipam.ErrPoolExhausted, "10.32.0.0/26")

	// Once restore is done, the blocks of the old run that nothing was
	// asked of go back, in pools this run used and in others.
	if err := r2.alloc.ReturnEmptyBlocks(ctx); err != nil {
		t.Fatal(err)
	}
	if got := blockKeys(t, r2, p.ID); len(got) != 3 {
		t.Fatalf("blocks of 10.30.0.0/24 after ReturnEmptyBlocks: %v, want the 3 in use", got)
	}
	if got, err := other.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.30.0.200")}); err != nil || got != addr4("10.30.0.200") {
		t.Fatalf("address of a returned block on another host: %s, %v", got, err)
	}
	if got, err := other.alloc.RequestAddress(ctx, p2.ID, ipam.AddressRequest{Preferred: addr4("10.31.0.5")}); err != nil || got != addr4("10.31.0.5") {
		t.Fatalf("address of a returned block of an unused pool on another host: %s, %v", got, err)
	}
	// Everything r2 holds can be released, the last release of a block
	// returning it.
	for a := range mine {
		if err := r2.alloc.ReleaseAddress(ctx, p.ID, a); err != nil {
			t.Fatalf("release %s: %v", a, err)
		}
	}
	for k, h := range blockKeys(t, r2, p.ID) {
		if h == "r" {
			t.Fatalf("block %s still r's after every release", k)
		}
	}
}

// TestRestartLeaseExpired: a controller that comes back after its lease
// expired has lost its blocks; with a new lease it claims them again by
// asking for its recorded addresses, unless another host took the block
// meanwhile. Recorded VXLAN IDs stay taken.
func TestRestartLeaseExpired(t *testing.T) {
	srv, hs := newHosts(t, 1)
	other := hs[0]
	ctx := t.Context()
	r := newHost(t, srv, "r", time.Second)
	p, err := r.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.40.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	held := []netip.Addr{addr4("10.40.0.1"), addr4("10.40.0.2"), addr4("10.40.0.3"), addr4("10.40.0.70")}
	for _, a := range held {
		if _, err := r.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: a}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := r.vxlan.Request(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = r.alloc.Close()
	_ = r.st.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(blockKeys(t, other, p.ID)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("blocks of the expired lease still there")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Another host takes the block of .70 meanwhile.
	if _, err := other.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4("10.40.0.66")}); err != nil {
		t.Fatal(err)
	}

	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "cnm/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	_, err = st.AdoptLease(ctx, r.lease.ID())
	wantErr(t, err, etcdstore.ErrLeaseLost)
	l, err := st.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r2 := withLease(t, "r", st, l)
	for _, a := range held[:3] {
		if got, err := r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: a}); err != nil || got != a {
			t.Fatalf("ask again for %s with a new lease: %s, %v", a, got, err)
		}
	}
	_, err = r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: held[3]})
	wantErr(t, err, errdefs.ErrExists, "10.40.0.70", `host "host0"`)
	if got, err := r2.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil || got != addr4("10.40.0.4") {
		t.Fatalf("new address with a new lease: %s, %v; want 10.40.0.4", got, err)
	}
	if id, err := r2.vxlan.Request(ctx); err != nil || id != 4098 {
		t.Fatalf("vxlan id with a new lease: %d, %v; want 4098 (4096 and 4097 are recorded)", id, err)
	}
	if err := r2.vxlan.RequestID(ctx, 4097); !errors.Is(err, errdefs.ErrExists) {
		t.Fatalf("recorded vxlan id 4097 asked for again: %v, want ErrExists", err)
	}
}
