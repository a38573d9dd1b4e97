package global

import (
	"errors"
	"sync"
	"testing"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

// TestVXLANUniqueAcrossHosts: hosts allocate VXLAN IDs at once from a small
// range until it is exhausted; every ID is handed out once, and IDs are
// recorded so that a released one can be taken again.
func TestVXLANUniqueAcrossHosts(t *testing.T) {
	_, hs := newHosts(t, 3)
	ctx := t.Context()
	var mu sync.Mutex
	owner := map[uint32]string{}
	var wg sync.WaitGroup
	for _, h := range hs {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					id, err := h.vxlan.Request(ctx)
					if err != nil {
						if !errors.Is(err, ipam.ErrPoolExhausted) {
							t.Errorf("%s: %v", h.name, err)
						}
						return
					}
					mu.Lock()
					if o, dup := owner[id]; dup {
						t.Errorf("%s handed out vxlan id %d, already handed out by %s", h.name, id, o)
					}
					owner[id] = h.name
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(owner) != 256 {
		t.Fatalf("%d vxlan ids handed out, want all 256 of 4096-4351", len(owner))
	}
	_, err := hs[0].vxlan.Request(ctx)
	wantErr(t, err, ipam.ErrPoolExhausted, "vxlan ids 4096-4351")

	// A specific ID: taken ones are refused.
	var mine uint32
	for id, o := range owner {
		if o == hs[0].name {
			mine = id
			break
		}
	}
	wantErr(t, hs[0].vxlan.RequestID(ctx, mine), errdefs.ErrExists)
	wantErr(t, hs[1].vxlan.RequestID(ctx, mine), errdefs.ErrExists, "host0")
	// The network is deleted on another host: the ID is released there.
	if err := hs[1].vxlan.Release(ctx, mine); err != nil {
		t.Fatal(err)
	}
	wantErr(t, hs[1].vxlan.Release(ctx, mine), errdefs.ErrNotFound)
	if err := hs[2].vxlan.RequestID(ctx, mine); err != nil {
		t.Fatalf("released id %d again on a third host: %v", mine, err)
	}
	wantErr(t, hs[0].vxlan.RequestID(ctx, mine), errdefs.ErrExists, "host2")
	if err := hs[2].vxlan.Release(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if err := hs[0].vxlan.RequestID(ctx, mine); err != nil {
		t.Fatalf("id %d back on the host whose block it is: %v", mine, err)
	}
	if err := hs[0].vxlan.Release(ctx, mine); err != nil {
		t.Fatal(err)
	}
}

// TestVXLANRecordDecides: an ID asked for explicitly on one host, in a
// block another host holds, is skipped by the holder.
func TestVXLANRecordDecides(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	if id, err := hs[0].vxlan.Request(ctx); err != nil || id != 4096 {
		t.Fatalf("first id: %d, %v", id, err)
	}
	if err := hs[1].vxlan.RequestID(ctx, 4097); err != nil {
		t.Fatalf("explicit id in another host's block: %v", err)
	}
	if id, err := hs[0].vxlan.Request(ctx); err != nil || id != 4098 {
		t.Fatalf("next id on the block holder: %d, %v; want 4098 (4097 is taken)", id, err)
	}
	// Released, the explicit ID is free in etcd: the holder may take it
	// by asking for it (its next dynamic ID does not look back).
	if err := hs[1].vxlan.Release(ctx, 4097); err != nil {
		t.Fatal(err)
	}
	if err := hs[0].vxlan.RequestID(ctx, 4097); err != nil {
		t.Fatalf("4097 after its release: %v", err)
	}
	// The holder's count stays right: releasing its three IDs returns
	// the block.
	for _, id := range []uint32{4096, 4097, 4098} {
		if err := hs[0].vxlan.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if kvs, err := hs[0].st.List(ctx, "vxlan/"); err != nil || len(kvs) != 0 {
		t.Fatalf("vxlan keys left after every release: %v, %v", kvs, err)
	}
}

// TestVXLANRecordedBeforeClaim: an ID recorded before this host claimed
// its block is not counted as this host's: releasing it keeps the block
// while the host still has an ID in it, and the host's last release
// returns it.
func TestVXLANRecordedBeforeClaim(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	if err := hs[1].vxlan.RequestID(ctx, 4097); err != nil { // no block is held yet
		t.Fatal(err)
	}
	if id, err := hs[0].vxlan.Request(ctx); err != nil || id != 4096 {
		t.Fatalf("first id: %d, %v", id, err)
	}
	if err := hs[0].vxlan.Release(ctx, 4097); err != nil {
		t.Fatal(err)
	}
	if kvs, err := hs[0].st.List(ctx, "vxlan/blocks/"); err != nil || len(kvs) != 1 {
		t.Fatalf("blocks after releasing the id recorded elsewhere: %v, %v; want host0's, which holds 4096", kvs, err)
	}
	if err := hs[0].vxlan.Release(ctx, 4096); err != nil {
		t.Fatal(err)
	}
	if kvs, err := hs[0].st.List(ctx, "vxlan/"); err != nil || len(kvs) != 0 {
		t.Fatalf("vxlan keys after every release: %v, %v", kvs, err)
	}
}
