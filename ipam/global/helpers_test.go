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

func newHosts(t testing.TB, n int) (*etcdtest.Server, []*host) {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Options{})
	hs := make([]*host, n)
	for i := range hs {
		hs[i] = newHost(t, srv, fmt.Sprintf("host%d", i), 10*time.Second)
	}
	return srv, hs
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
