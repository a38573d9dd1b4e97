package global

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

func TestConfigErrors(t *testing.T) {
	_, hs := newHosts(t, 1)
	h := hs[0]
	for _, tc := range []struct {
		cfg   Config
		words []string
	}{
		{Config{Lease: h.lease, Host: "a"}, []string{"store"}},
		{Config{Store: h.st, Host: "a"}, []string{"lease"}},
		{Config{Store: h.st, Lease: h.lease}, []string{"host"}},
		{Config{Store: h.st, Lease: h.lease, Host: "a", BlockSizeV4: 8}, []string{"block size v4", "/8"}},
		{Config{Store: h.st, Lease: h.lease, Host: "a", BlockSizeV6: 64}, []string{"block size v6", "/64"}},
	} {
		_, err := New(tc.cfg)
		wantErr(t, err, errdefs.ErrInvalid, tc.words...)
	}
	for _, tc := range []struct {
		cfg   VXLANConfig
		words []string
	}{
		{VXLANConfig{Store: h.st, Lease: h.lease, Host: "a", Max: 1 << 24}, []string{"max vxlan id", "16777216"}},
		{VXLANConfig{Store: h.st, Lease: h.lease, Host: "a", Min: 5000, Max: 4999}, []string{"min vxlan id 5000", "4999"}},
		{VXLANConfig{Store: h.st, Lease: h.lease, Host: "a", BlockSize: 17}, []string{"block size 17"}},
		{VXLANConfig{Store: h.st, Lease: h.lease}, []string{"host"}},
	} {
		_, err := NewVXLAN(tc.cfg)
		wantErr(t, err, errdefs.ErrInvalid, tc.words...)
	}
	a := h.alloc
	ctx := t.Context()
	for _, tc := range []struct {
		req   ipam.PoolRequest
		words []string
	}{
		{ipam.PoolRequest{}, []string{"subnet is not set"}},
		{ipam.PoolRequest{AddressSpace: ipam.LocalSpace, Subnet: netip.MustParsePrefix("10.0.0.0/24")}, []string{"address space", `"local"`}},
		{ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.1/24")}, []string{"subnet 10.0.0.1/24", "host bits"}},
		{ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/24"), V6: true}, []string{"subnet 10.0.0.0/24", "v6=true"}},
		{ipam.PoolRequest{Subnet: netip.MustParsePrefix("fd00::/48"), V6: true}, []string{"subnet fd00::/48", "/64"}},
		{ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/24"), IPRange: netip.MustParsePrefix("10.0.0.0/25")}, []string{"ip-range 10.0.0.0/25"}},
		{ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Size: 24}, []string{"size 24"}},
	} {
		_, err := a.RequestPool(ctx, tc.req)
		wantErr(t, err, errdefs.ErrInvalid, tc.words...)
	}
	p, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr  netip.Addr
		words []string
	}{
		{netip.MustParseAddr("10.0.1.1"), []string{"preferred address 10.0.1.1", "10.0.0.0/24"}},
		{netip.MustParseAddr("10.0.0.0"), []string{"preferred address 10.0.0.0", "reserved"}},
		{netip.MustParseAddr("10.0.0.255"), []string{"preferred address 10.0.0.255", "reserved"}},
		{netip.MustParseAddr("fd00::1"), []string{"preferred address fd00::1"}},
	} {
		_, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: tc.addr})
		wantErr(t, err, errdefs.ErrInvalid, tc.words...)
	}
	_, err = a.RequestAddress(ctx, "global/10.9.0.0/24#00", ipam.AddressRequest{})
	wantErr(t, err, errdefs.ErrNotFound, "global/10.9.0.0/24#00")
	_, err = a.RequestAddress(ctx, "nonsense", ipam.AddressRequest{})
	wantErr(t, err, errdefs.ErrNotFound, `"nonsense"`)
	// A well-formed ID of the pool's subnet with another nonce: unknown.
	other := p.ID[:strings.LastIndexByte(p.ID, '#')+1] + "0123456789abcdef"
	_, err = a.RequestAddress(ctx, other, ipam.AddressRequest{})
	wantErr(t, err, errdefs.ErrNotFound, other)
	wantErr(t, a.ReleasePool(ctx, other), errdefs.ErrNotFound, other)
	for _, bad := range []string{p.ID + "0", p.ID[:len(p.ID)-1] + "G", "global/10.0.0.0/24", "global/fd00:0::/64" + p.ID[len(p.ID)-17:]} {
		_, err = a.RequestAddress(ctx, bad, ipam.AddressRequest{})
		wantErr(t, err, errdefs.ErrNotFound, bad, "not a global pool id")
	}
	err = a.ReleaseAddress(ctx, p.ID, netip.MustParseAddr("10.0.0.7"))
	wantErr(t, err, errdefs.ErrNotFound, "10.0.0.7", "host0")
	err = h.vxlan.RequestID(ctx, 100)
	wantErr(t, err, errdefs.ErrInvalid, "vxlan id 100")
	err = h.vxlan.Release(ctx, 4200)
	wantErr(t, err, errdefs.ErrNotFound, "4200")
}

// TestPoolsAcrossHosts: a pool made on one host is used by its ID on
// another; overlapping pools are not refused, whichever host asks (see
// TestSameSubnetPools).
func TestPoolsAcrossHosts(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{AddressSpace: ipam.GlobalSpace, Subnet: netip.MustParsePrefix("10.1.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	// An overlapping subnet is a pool of its own, not ErrOverlap: each
	// global network lives in its own network namespace on every host, so
	// two of them may use the same addresses. It changes nothing of p.
	inner, err := hs[1].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.1.2.0/24")})
	if err != nil || inner.ID == p.ID {
		t.Fatalf("pool of a subnet inside another pool's: %+v, %v; want a pool of its own", inner, err)
	}
	a0, err := hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	if err != nil || a0 != netip.MustParseAddr("10.1.0.1") {
		t.Fatalf("first address on host0: %s, %v", a0, err)
	}
	a1, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	if err != nil || a1 != netip.MustParseAddr("10.1.0.64") {
		t.Fatalf("first address on host1: %s, %v; want the first of the second block", a1, err)
	}
	// A preferred address in another host's block is refused, naming it.
	_, err = hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: netip.MustParseAddr("10.1.0.9")})
	wantErr(t, err, errdefs.ErrExists, "10.1.0.9", "10.1.0.0/26", `"host0"`)
	// One in a free block is served, claiming the block.
	if got, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: netip.MustParseAddr("10.1.200.3")}); err != nil || got.String() != "10.1.200.3" {
		t.Fatalf("preferred address in a free block: %s, %v", got, err)
	}
	_, err = hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: netip.MustParseAddr("10.1.200.3")})
	wantErr(t, err, errdefs.ErrExists, "10.1.200.3", "already allocated")

	// Concurrent pool requests of overlapping (and equal) subnets: all
	// succeed, each a pool of its own (no ErrOverlap in the global space:
	// each network has its own namespace on every host).
	var wg sync.WaitGroup
	subnets := []string{"10.2.0.0/16", "10.2.128.0/17", "10.2.0.0/16", "10.2.0.0/16"}
	errs := make([]error, len(subnets))
	ids := make([]string, len(subnets))
	for i, s := range subnets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pool ipam.Pool
			pool, errs[i] = hs[i%2].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix(s)})
			ids[i] = pool.ID
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil || seen[ids[i]] {
			t.Fatalf("overlapping pool %s requested at once with others: %q, %v; want a pool of its own", subnets[i], ids[i], err)
		}
		seen[ids[i]] = true
	}

	// Release on any host drops it for all; the stale ID is then unknown.
	if err := hs[1].alloc.ReleasePool(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	wantErr(t, hs[0].alloc.ReleasePool(ctx, p.ID), errdefs.ErrNotFound, p.ID)
	p2, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.1.0.0/16")})
	if err != nil {
		t.Fatalf("subnet again after release: %v", err)
	}
	if _, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("address from a stale pool id: %v", err)
	}
	// host0 had the pool cached, with a block: its watch drops it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host0 still serves the released pool: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, err := hs[1].alloc.RequestAddress(ctx, p2.ID, ipam.AddressRequest{}); err != nil || got.String() != "10.1.0.1" {
		t.Fatalf("first address of the new pool: %s, %v (blocks of the old pool left?)", got, err)
	}
}

// TestConcurrentHostsNoDuplicate: several hosts allocate at once, with
// several goroutines each, from one small subnet until it is exhausted:
// every usable address is handed out exactly once.
func TestConcurrentHostsNoDuplicate(t *testing.T) {
	_, hs := newHosts(t, 3)
	ctx := t.Context()
	p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.3.0.0/22")}) // 16 blocks, 1022 addresses
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, h := range hs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for {
					a, err := h.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
					if err != nil {
						if !errors.Is(err, ipam.ErrPoolExhausted) {
							t.Errorf("%s: %v", h.name, err)
						} else if !strings.Contains(err.Error(), "10.3.0.0/22") {
							t.Errorf("exhaustion error %q does not name the subnet", err)
						}
						return
					}
					mu.Lock()
					if o, dup := owner[a]; dup {
						t.Errorf("%s handed out %s, already handed out by %s", h.name, a, o)
					}
					owner[a] = h.name
					mu.Unlock()
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	if len(owner) != 1022 {
		t.Fatalf("%d addresses handed out, want all 1022 usable ones", len(owner))
	}
	per := map[string]int{}
	for _, h := range owner {
		per[h]++
	}
	t.Logf("addresses per host: %v", per)
}

// TestBlockRelease: an emptied block is returned and can be claimed by
// another host; a block still in use stays.
func TestBlockRelease(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.4.0.0/25")}) // 2 blocks
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Addr
	for range 64 { // 63 in the first block (no .0), 1 in the second
		a, err := hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	_, err = hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	wantErr(t, err, ipam.ErrPoolExhausted, "10.4.0.0/25", "host1")
	blocks := func() int {
		kvs, err := hs[0].st.List(ctx, blocksPrefix)
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}
	if n := blocks(); n != 2 {
		t.Fatalf("%d block keys, want 2", n)
	}
	// Freeing the only address of the second block returns the block.
	if err := hs[0].alloc.ReleaseAddress(ctx, p.ID, got[63]); err != nil {
		t.Fatal(err)
	}
	if n := blocks(); n != 1 {
		t.Fatalf("%d block keys after emptying one, want 1", n)
	}
	wantErr(t, hs[0].alloc.ReleaseAddress(ctx, p.ID, got[63]), errdefs.ErrNotFound, got[63].String())
	a, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	if err != nil || a.String() != "10.4.0.64" {
		t.Fatalf("host1 after the block was returned: %s, %v", a, err)
	}
	// Another host cannot release host0's address.
	wantErr(t, hs[1].alloc.ReleaseAddress(ctx, p.ID, got[0]), errdefs.ErrNotFound, got[0].String(), "host1")
	// Freeing all but one keeps the block; ReturnEmptyBlocks keeps it too.
	for _, a := range got[1:63] {
		if err := hs[0].alloc.ReleaseAddress(ctx, p.ID, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := hs[0].alloc.ReturnEmptyBlocks(ctx); err != nil {
		t.Fatal(err)
	}
	if n := blocks(); n != 2 {
		t.Fatalf("%d block keys, want 2 (both in use)", n)
	}
}

// TestLeaseLossFreesBlocks: a host whose lease ends loses its blocks to
// other hosts, and its allocator refuses to go on.
func TestLeaseLossFreesBlocks(t *testing.T) {
	srv, hs := newHosts(t, 1)
	ctx := t.Context()
	dying := newHost(t, srv, "dying", time.Second)
	p, err := dying.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.5.0.0/26")}) // one block
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dying.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil {
		t.Fatal(err)
	}
	vni, err := dying.vxlan.Request(ctx)
	if err != nil || vni != 4096 {
		t.Fatalf("first vxlan id: %d, %v", vni, err)
	}
	_, err = hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
	wantErr(t, err, ipam.ErrPoolExhausted, "10.5.0.0/26")

	// The host dies: its store stops renewing the lease.
	_ = dying.st.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, err := hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err == nil {
			if a.String() != "10.5.0.1" {
				t.Fatalf("address after the other host died: %s", a)
			}
			break
		}
		if !errors.Is(err, ipam.ErrPoolExhausted) || time.Now().After(deadline) {
			t.Fatalf("block of a dead host not reusable: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	<-dying.lease.Lost()
	_, err = dying.alloc.RequestAddress(context.Background(), p.ID, ipam.AddressRequest{})
	wantErr(t, err, etcdstore.ErrLeaseLost, "dying")
	_, err = dying.vxlan.Request(context.Background())
	wantErr(t, err, etcdstore.ErrLeaseLost, "dying")

	// The dead host's VXLAN block is free again, but the ID it gave a
	// network is not: it outlives the host.
	for {
		id, err := hs[0].vxlan.Request(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if id == 4096 {
			t.Fatal("vxlan id 4096 of the dead host's network handed out again")
		}
		if id < 4096+64 {
			break // in the dead host's old block
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead host's vxlan block not reused: got %d", id)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// countingKV counts the requests an allocator makes to the store.
type countingKV struct {
	KV
	mu sync.Mutex
	n  int
}

func (c *countingKV) count() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *countingKV) Get(ctx context.Context, key string) (store.KV, error) {
	c.count()
	return c.KV.Get(ctx, key)
}

func (c *countingKV) Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error) {
	c.count()
	return c.KV.Snapshot(ctx, prefix)
}

func (c *countingKV) TxnIf(ctx context.Context, conds []etcdstore.Cond, ops ...etcdstore.Op) (uint64, error) {
	c.count()
	return c.KV.TxnIf(ctx, conds, ops...)
}

// TestPerAddressPathStaysLocal: inside a claimed block, allocating and
// freeing addresses sends nothing to etcd.
func TestPerAddressPathStaysLocal(t *testing.T) {
	_, hs := newHosts(t, 1)
	ctx := t.Context()
	kv := &countingKV{KV: hs[0].st}
	a, err := New(Config{Store: kv, Lease: hs[0].lease, Host: "counted"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	p, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.6.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	first, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{}) // loads the pool, claims a block
	if err != nil {
		t.Fatal(err)
	}
	before := kv.n
	var got []netip.Addr
	for range 62 { // the rest of the first block
		addr, err := a.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addr)
	}
	for _, addr := range got[:30] {
		if err := a.ReleaseAddress(ctx, p.ID, addr); err != nil {
			t.Fatal(err)
		}
	}
	if kv.n != before {
		t.Fatalf("%d store requests for 62 allocations and 30 releases inside one block, want 0", kv.n-before)
	}
	if got[61].String() != "10.6.0.63" || first.String() != "10.6.0.1" {
		t.Fatalf("addresses %s..%s, want 10.6.0.1..10.6.0.63", first, got[61])
	}
}

func TestIPv6(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("fd00:1::/64"), V6: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"fd00:1::1", "fd00:1::40"} { // a /122 block each
		got, err := hs[i].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if err != nil || got.String() != want {
			t.Fatalf("host%d: %s, %v; want %s", i, got, err, want)
		}
	}
	high := netip.MustParseAddr("fd00:1::ffff:ffff:ffff:ffff")
	if got, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: high}); err != nil || got != high {
		t.Fatalf("last address of the /64: %s, %v", got, err)
	}
	if err := hs[1].alloc.ReleaseAddress(ctx, p.ID, high); err != nil {
		t.Fatal(err)
	}
	_, err = hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: netip.MustParseAddr("fd00:1::")})
	wantErr(t, err, errdefs.ErrInvalid, "fd00:1::", "reserved")
}

// TestPoolReleasedAndRequestedAgain: a pool released and requested again
// with the same subnet on the same host is served by its new ID, however
// late the watch sees the old pool go (the benchmark found this).
func TestPoolReleasedAndRequestedAgain(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	subnet := netip.MustParsePrefix("10.7.0.0/24")
	for round := range 20 {
		p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet})
		if err != nil {
			t.Fatal(err)
		}
		var got []netip.Addr
		for range 70 { // two blocks
			a, err := hs[0].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			got = append(got, a)
		}
		for _, a := range got {
			if err := hs[0].alloc.ReleaseAddress(ctx, p.ID, a); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if err := hs[round%2].alloc.ReleasePool(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Pool keys are never used again: what the watch remembers of released
	// pools goes with the lookups that needed it, rather than piling up.
	for _, h := range hs {
		h.alloc.mu.Lock()
		n, m := len(h.alloc.loading), len(h.alloc.deleted)
		h.alloc.mu.Unlock()
		if n != 0 || m != 0 {
			t.Fatalf("%s: %d lookups and %d deletes remembered with no call in flight, want none", h.name, n, m)
		}
	}
}

// TestMinBlocks: with MinBlocks, a small subnet is cut into small enough
// blocks for that many hosts; a big one keeps the block size.
func TestMinBlocks(t *testing.T) {
	_, hs := newHosts(t, 1)
	h := hs[0]
	ctx := t.Context()
	a, err := New(Config{Store: h.st, Lease: h.lease, Host: "a", MinBlocks: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, tc := range []struct {
		subnet string
		bits   int
	}{{"10.9.0.0/24", 28}, {"10.10.0.0/16", 26}, {"10.11.0.0/30", 32}} {
		pool, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix(tc.subnet)})
		if err != nil {
			t.Fatal(err)
		}
		kv, err := h.st.Get(ctx, poolPrefix+poolKey(t, pool.ID))
		if err != nil {
			t.Fatal(err)
		}
		var rec poolRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.BlockSize != tc.bits {
			t.Errorf("%s: block size /%d, want /%d", tc.subnet, rec.BlockSize, tc.bits)
		}
	}
	_, err = New(Config{Store: h.st, Lease: h.lease, Host: "x", MinBlocks: -1})
	wantErr(t, err, errdefs.ErrInvalid, "min blocks")
}
