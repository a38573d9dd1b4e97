package global

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	etcdstore "github.com/seed53641549/cnm/store/etcd"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

// host is one simulated host: its own etcd client, lease and allocators.
type host struct {
	name  string
	st    *etcdstore.Store
	lease *etcdstore.Lease
	alloc *Allocator
	vxlan *VXLANAllocator
}

func newHost(t testing.TB, srv *etcdtest.Server, name string, ttl time.Duration) *host {
	t.Helper()
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "cnm/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	l, err := st.GrantLease(t.Context(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return withLease(t, name, st, l)
}

func newHosts(t testing.TB, n int) (*etcdtest.Server, []*host) {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Options{})
	hs := make([]*host, n)
	for i := range hs {
		hs[i] = newHost(t, srv, fmt.Sprintf("host%d", i), 10*time.Second)
	}
	return srv, hs
}

// poolKey returns the key of pool poolID in the store.
func poolKey(t testing.TB, poolID string) string {
	t.Helper()
	_, key, err := parsePoolID(poolID)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func wantErr(t testing.TB, err error, target error, words ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v: want one wrapping %v", err, target)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not name %q", err, w)
		}
	}
}

// restart simulates a restart of h's controller within its lease's TTL:
// the allocators are dropped and the etcd client closed without revoking
// the lease; a new client adopts the lease, and new allocators with the
// same host name use it.
func restart(t testing.TB, srv *etcdtest.Server, h *host) *host {
	t.Helper()
	_ = h.alloc.Close()
	_ = h.st.Close()
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "cnm/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	l, err := st.AdoptLease(t.Context(), h.lease.ID())
	if err != nil {
		t.Fatalf("adopt the lease of %s: %v", h.name, err)
	}
	return withLease(t, h.name, st, l)
}

// withLease makes the allocators of host name on st and l.
func withLease(t testing.TB, name string, st *etcdstore.Store, l *etcdstore.Lease) *host {
	t.Helper()
	a, err := New(Config{Store: st, Lease: l, Host: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	v, err := NewVXLAN(VXLANConfig{Store: st, Lease: l, Host: name, Min: 4096, Max: 4096 + 255})
	if err != nil {
		t.Fatal(err)
	}
	return &host{name: name, st: st, lease: l, alloc: a, vxlan: v}
}
