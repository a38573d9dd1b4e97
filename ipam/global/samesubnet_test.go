package global

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

// keysUnder returns the keys under prefix with their revisions.
func keysUnder(t *testing.T, h *host, prefix string) map[string]uint64 {
	t.Helper()
	kvs, err := h.st.List(t.Context(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]uint64, len(kvs))
	for _, kv := range kvs {
		out[kv.Key] = kv.Revision
	}
	return out
}

// poolKeys returns every key of pool poolID (record, blocks, reservations)
// with its revision.
func poolKeys(t *testing.T, h *host, poolID string) map[string]uint64 {
	t.Helper()
	key := poolKey(t, poolID)
	out := keysUnder(t, h, blocksPrefix+key+"/")
	for k, rev := range keysUnder(t, h, reservedPrefix+key+"/") {
		out[k] = rev
	}
	if rec := keysUnder(t, h, poolPrefix+key); len(rec) > 0 {
		for k, rev := range rec {
			out[k] = rev
		}
	}
	return out
}

// TestSameSubnetPools: two hosts request a pool of the same subnet (two
// overlay networks, each in its own namespace on every host). Both pools
// hand out addresses independently (the same address once in each), a
// reservation in one does not hold the address in the other, blocks are
// claimed per pool, and releasing one pool leaves the other's blocks,
// reservations and addresses as they were, on every host.
func TestSameSubnetPools(t *testing.T) {
	_, hs := newHosts(t, 2)
	h0, h1 := hs[0], hs[1]
	ctx := t.Context()
	subnet := netip.MustParsePrefix("10.0.0.0/24")
	pa, err := h0.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := h1.alloc.RequestPool(ctx, ipam.PoolRequest{AddressSpace: ipam.GlobalSpace, Subnet: subnet})
	if err != nil {
		t.Fatalf("second pool of the same subnet: %v; want a pool of its own", err)
	}
	if pa.ID == pb.ID || pa.Subnet != subnet || pb.Subnet != subnet {
		t.Fatalf("pools %+v and %+v: want two IDs of %s", pa, pb, subnet)
	}
	if n := len(keysUnder(t, h0, poolPrefix)); n != 2 {
		t.Fatalf("%d pool records, want 2", n)
	}

	// Gateways: .1 in A, .254 in B, and an auxiliary address .100 in B.
	gwA, gwB, auxB := addr4("10.0.0.1"), addr4("10.0.0.254"), addr4("10.0.0.100")
	if err := h0.alloc.ReserveAddress(ctx, pa.ID, gwA); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{gwB, auxB} {
		if err := h1.alloc.ReserveAddress(ctx, pb.ID, a); err != nil {
			t.Fatalf("reserve %s in B: %v", a, err)
		}
	}
	// A's gateway does not hold .1 in B: it is B's first address.
	if got, err := h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{}); err != nil || got != gwA {
		t.Fatalf("first address of B: %s, %v; want %s (reserved in A only)", got, err, gwA)
	}
	if got, err := h0.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{}); err != nil || got != addr4("10.0.0.2") {
		t.Fatalf("first address of A: %s, %v; want 10.0.0.2 (.1 is A's gateway)", got, err)
	}
	// The same address once in each pool, not twice in one.
	if got, err := h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: addr4("10.0.0.2")}); err != nil || got != addr4("10.0.0.2") {
		t.Fatalf("10.0.0.2 in B while A has it: %s, %v", got, err)
	}
	_, err = h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: addr4("10.0.0.2")})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.2", "already allocated")
	_, err = h0.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{Preferred: addr4("10.0.0.2")})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.2", "already allocated")
	// B's auxiliary address is free in A, and reserved in B for any host.
	if got, err := h0.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{Preferred: auxB}); err != nil || got != auxB {
		t.Fatalf("%s in A while B reserves it: %s, %v", auxB, got, err)
	}
	_, err = h0.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: auxB})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.100", "reserved")
	// Blocks are claimed per pool: block 0 is host0's in A, host1's in B.
	_, err = h1.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{Preferred: addr4("10.0.0.3")})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.3", `host "host0"`)
	_, err = h0.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: addr4("10.0.0.3")})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.3", `host "host1"`)
	if got := blockKeys(t, h0, pa.ID); len(got) != 2 {
		t.Fatalf("blocks of A: %v; want block 0 and 1 (host0)", got)
	}
	if got := blockKeys(t, h0, pb.ID); len(got) != 1 {
		t.Fatalf("blocks of B: %v; want block 0 (host1); block 1 was returned after the refusal", got)
	}

	// Both hosts fill both pools: each hands out all its usable addresses
	// but its reserved ones, once, whatever the other pool holds.
	owner := map[string]map[netip.Addr]*host{
		pa.ID: {addr4("10.0.0.2"): h0, auxB: h0},
		pb.ID: {gwA: h1, addr4("10.0.0.2"): h1},
	}
	for _, id := range []string{pa.ID, pb.ID} {
		for _, h := range []*host{h0, h1} {
			for {
				got, err := h.alloc.RequestAddress(ctx, id, ipam.AddressRequest{})
				if errors.Is(err, ipam.ErrPoolExhausted) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if o := owner[id][got]; o != nil {
					t.Fatalf("%s handed out %s in %s, already handed out there by %s", h.name, got, id, o.name)
				}
				owner[id][got] = h
			}
		}
	}
	if len(owner[pa.ID]) != 253 || len(owner[pb.ID]) != 252 {
		t.Fatalf("%d addresses in A and %d in B, want 253 (254 usable, 1 reserved) and 252 (2 reserved)", len(owner[pa.ID]), len(owner[pb.ID]))
	}
	if owner[pa.ID][gwA] != nil || owner[pb.ID][gwB] != nil || owner[pb.ID][auxB] != nil {
		t.Fatal("a reserved address was handed out in its own pool")
	}

	// host1 releases A (host0 made it); host0 has A cached, with blocks.
	before := poolKeys(t, h0, pb.ID)
	if len(before) != 1+4+2 {
		t.Fatalf("keys of B: %v; want its record, 4 blocks and 2 reservations", before)
	}
	if err := h1.alloc.ReleasePool(ctx, pa.ID); err != nil {
		t.Fatal(err)
	}
	if got := poolKeys(t, h0, pa.ID); len(got) != 0 {
		t.Fatalf("keys of A left after its release: %v", got)
	}
	after := poolKeys(t, h0, pb.ID)
	if len(after) != len(before) {
		t.Fatalf("keys of B after A's release: %v; want %v", after, before)
	}
	for k, rev := range before {
		if after[k] != rev {
			t.Fatalf("key %s of B changed with A's release: revision %d, was %d", k, after[k], rev)
		}
	}
	// host0's watch drops A; it keeps serving B from its blocks meanwhile.
	var mineB netip.Addr
	for a, h := range owner[pb.ID] {
		if h == h0 {
			mineB = a
			break
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := h0.alloc.ReleaseAddress(ctx, pb.ID, mineB); err != nil {
			t.Fatalf("B on host0 after A's release: %v", err)
		}
		if got, err := h0.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{}); err != nil || got != mineB {
			t.Fatalf("B on host0 after A's release: %s, %v; want %s back", got, err, mineB)
		}
		_, err := h0.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{})
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host0 still serves the released pool A: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// B's addresses and reservations are as they were, on both hosts.
	_, err = h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: gwA})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.1", "already allocated")
	_, err = h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{})
	wantErr(t, err, ipam.ErrPoolExhausted, "10.0.0.0/24")
	_, err = h0.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: gwB})
	wantErr(t, err, errdefs.ErrExists, "10.0.0.254", "reserved")
	wantErr(t, h1.alloc.ReserveAddress(ctx, pb.ID, auxB), errdefs.ErrExists, "10.0.0.100", "already reserved")
	if err := h1.alloc.ReleaseAddress(ctx, pb.ID, gwA); err != nil {
		t.Fatal(err)
	}
	if got, err := h1.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{}); err != nil || got != gwA {
		t.Fatalf("B after releasing %s: %s, %v", gwA, got, err)
	}

	// A new pool of the subnet starts clean: nothing of A's, nor of B's.
	pc, err := h0.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet})
	if err != nil {
		t.Fatal(err)
	}
	if err := h0.alloc.ReserveAddress(ctx, pc.ID, gwB); err != nil {
		t.Fatalf("reserve %s in C while B reserves it: %v", gwB, err)
	}
	if got, err := h1.alloc.RequestAddress(ctx, pc.ID, ipam.AddressRequest{}); err != nil || got != gwA {
		t.Fatalf("first address of C: %s, %v; want %s", got, err, gwA)
	}
	if err := h0.alloc.ReleasePool(ctx, pb.ID); err != nil {
		t.Fatal(err)
	}
	left := keysUnder(t, h0, "ipam/global/")
	if want := poolKeys(t, h0, pc.ID); len(left) != len(want) || len(want) != 3 {
		t.Fatalf("keys after B's release: %v; want C's alone (record, a block, a reservation)", left)
	}
}

// TestSameSubnetRestart: a restarted host that held blocks in two pools
// of the same subnet takes back those of the pool it asks again, and
// ReturnEmptyBlocks gives back the other's, pool by pool.
func TestSameSubnetRestart(t *testing.T) {
	srv, hs := newHosts(t, 1)
	other := hs[0]
	ctx := t.Context()
	r := newHost(t, srv, "r", 10*time.Second)
	subnet := netip.MustParsePrefix("10.50.0.0/24")
	var pools [2]ipam.Pool
	for i := range pools {
		p, err := r.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet})
		if err != nil {
			t.Fatal(err)
		}
		pools[i] = p
		for _, a := range []string{"10.50.0.5", "10.50.0.70"} {
			if got, err := r.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: addr4(a)}); err != nil || got != addr4(a) {
				t.Fatalf("pool %d: %s, %v", i, got, err)
			}
		}
	}
	pa, pb := pools[0], pools[1]

	r2 := restart(t, srv, r)
	// Only A's addresses are asked for again (B's network went meanwhile).
	for _, a := range []string{"10.50.0.5", "10.50.0.70"} {
		if got, err := r2.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{Preferred: addr4(a)}); err != nil || got != addr4(a) {
			t.Fatalf("ask again for %s in A: %s, %v", a, got, err)
		}
	}
	if err := r2.alloc.ReturnEmptyBlocks(ctx); err != nil {
		t.Fatal(err)
	}
	if got := blockKeys(t, r2, pa.ID); len(got) != 2 {
		t.Fatalf("blocks of A after ReturnEmptyBlocks: %v; want the 2 in use", got)
	}
	if got := blockKeys(t, r2, pb.ID); len(got) != 0 {
		t.Fatalf("blocks of B after ReturnEmptyBlocks: %v; want none", got)
	}
	if got, err := other.alloc.RequestAddress(ctx, pb.ID, ipam.AddressRequest{Preferred: addr4("10.50.0.5")}); err != nil || got != addr4("10.50.0.5") {
		t.Fatalf("address of B's returned block on another host: %s, %v", got, err)
	}
	_, err := other.alloc.RequestAddress(ctx, pa.ID, ipam.AddressRequest{Preferred: addr4("10.50.0.6")})
	wantErr(t, err, errdefs.ErrExists, "10.50.0.6", `host "r"`)
}
