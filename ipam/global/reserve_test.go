package global

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

var (
	gw  = netip.MustParseAddr("10.20.0.1")
	aux = netip.MustParseAddr("10.20.0.70")
)

// TestReserveAddress: a gateway and an auxiliary address reserved on host0
// right after its pool was requested are never handed out by any host,
// before or after host0's lease ends, until the pool goes.
func TestReserveAddress(t *testing.T) {
	_, hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	ctx := t.Context()
	p, err := a.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.20.0.0/25")}) // 2 blocks, 126 usable
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []netip.Addr{gw, aux} {
		if err := a.alloc.ReserveAddress(ctx, p.ID, addr); err != nil {
			t.Fatalf("reserve %s: %v", addr, err)
		}
	}
	wantErr(t, a.alloc.ReserveAddress(ctx, p.ID, gw), errdefs.ErrExists, "10.20.0.1", "already reserved")
	wantErr(t, b.alloc.ReserveAddress(ctx, p.ID, gw), errdefs.ErrExists, "10.20.0.1", "already reserved")
	wantErr(t, a.alloc.ReserveAddress(ctx, p.ID, netip.MustParseAddr("10.20.0.0")), errdefs.ErrInvalid, "address 10.20.0.0", "reserved address")
	wantErr(t, a.alloc.ReserveAddress(ctx, p.ID, netip.MustParseAddr("10.20.1.1")), errdefs.ErrInvalid, "address 10.20.1.1", "10.20.0.0/25")
	wantErr(t, a.alloc.ReserveAddress(ctx, p.ID, netip.Addr{}), errdefs.ErrInvalid, "address")
	wantErr(t, a.alloc.ReserveAddress(ctx, "global/10.99.0.0/24#00", gw), errdefs.ErrNotFound, "10.99.0.0/24")

	// host0 claims block 0 after the reservation: it skips the gateway.
	if got, err := a.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil || got.String() != "10.20.0.2" {
		t.Fatalf("first address after reserving the gateway: %s, %v; want 10.20.0.2", got, err)
	}
	_, err = a.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: gw})
	wantErr(t, err, errdefs.ErrExists, "10.20.0.1", "reserved")
	// Releasing a reserved address is refused and changes nothing.
	wantErr(t, a.alloc.ReleaseAddress(ctx, p.ID, gw), errdefs.ErrNotFound, "10.20.0.1", "reserved")
	if got, err := a.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil || got.String() != "10.20.0.3" {
		t.Fatalf("address after the refused release: %s, %v; want 10.20.0.3", got, err)
	}
	// In a block this host holds: an address it handed out is refused, a
	// free one is reserved and skipped from then on.
	wantErr(t, a.alloc.ReserveAddress(ctx, p.ID, netip.MustParseAddr("10.20.0.3")), errdefs.ErrExists, "10.20.0.3", `allocated by host "host0"`)
	if err := a.alloc.ReserveAddress(ctx, p.ID, netip.MustParseAddr("10.20.0.4")); err != nil {
		t.Fatalf("reserve a free address of a held block: %v", err)
	}
	if got, err := a.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{}); err != nil || got.String() != "10.20.0.5" {
		t.Fatalf("address after reserving 10.20.0.4 in the held block: %s, %v; want 10.20.0.5", got, err)
	}
	// In a block another host holds: refused, naming the host (it may
	// have handed the address out).
	wantErr(t, b.alloc.ReserveAddress(ctx, p.ID, netip.MustParseAddr("10.20.0.20")), errdefs.ErrExists, "10.20.0.20", `host "host0"`)

	// host0 dies: its block goes, the reservations stay.
	if err := a.lease.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	reserved := map[netip.Addr]bool{gw: true, aux: true, netip.MustParseAddr("10.20.0.4"): true}
	seen := map[netip.Addr]bool{}
	for {
		got, err := b.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
		if errors.Is(err, ipam.ErrPoolExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if reserved[got] || seen[got] {
			t.Fatalf("host1 handed out %s (reserved: %t, twice: %t)", got, reserved[got], seen[got])
		}
		seen[got] = true
	}
	if len(seen) != 126-3 {
		t.Fatalf("host1 handed out %d addresses, want 123 (126 usable, 3 reserved)", len(seen))
	}
	_, err = b.alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{Preferred: aux})
	wantErr(t, err, errdefs.ErrExists, "10.20.0.70", "reserved")
	wantErr(t, b.alloc.ReleaseAddress(ctx, p.ID, aux), errdefs.ErrNotFound, "10.20.0.70")

	// The pool goes, with its reservations.
	if err := b.alloc.ReleasePool(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if kvs, err := b.st.List(ctx, "ipam/global/"); err != nil || len(kvs) != 0 {
		t.Fatalf("keys left after the pool was released: %v, %v; want none", kvs, err)
	}
	p2, err := b.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.20.0.0/25")})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.alloc.RequestAddress(ctx, p2.ID, ipam.AddressRequest{}); err != nil || got != gw {
		t.Fatalf("first address of the subnet requested again: %s, %v; want %s", got, err, gw)
	}
}

// TestReserveRacesClaim: a reservation and another host's claim of the
// block at the same instant: either the reservation is refused, or the
// block skips the address.
func TestReserveRacesClaim(t *testing.T) {
	_, hs := newHosts(t, 2)
	ctx := t.Context()
	refused := 0
	for round := range 20 {
		p, err := hs[0].alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.21.%d.0/26", round))})
		if err != nil {
			t.Fatal(err)
		}
		target := netip.MustParseAddr(fmt.Sprintf("10.21.%d.1", round))
		var wg sync.WaitGroup
		var rerr error
		var got []netip.Addr
		wg.Add(2)
		go func() {
			defer wg.Done()
			rerr = hs[0].alloc.ReserveAddress(ctx, p.ID, target)
		}()
		go func() {
			defer wg.Done()
			for {
				a, err := hs[1].alloc.RequestAddress(ctx, p.ID, ipam.AddressRequest{})
				if err != nil {
					if !errors.Is(err, ipam.ErrPoolExhausted) {
						t.Error(err)
					}
					return
				}
				got = append(got, a)
			}
		}()
		wg.Wait()
		handed := false
		for _, a := range got {
			handed = handed || a == target
		}
		switch {
		case rerr == nil && handed:
			t.Fatalf("round %d: %s reserved and handed out by host1", round, target)
		case rerr != nil && !errors.Is(rerr, errdefs.ErrExists):
			t.Fatalf("round %d: reserve: %v", round, rerr)
		case rerr != nil:
			refused++
		}
	}
	t.Logf("%d of 20 reservations lost the race to the block's claim", refused)
}
