package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

// open starts a server (or uses srv) and opens a store on it with a prefix
// of its own.
func open(t *testing.T, srv *etcdtest.Server, prefix string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Config{Endpoints: srv.Endpoints(), TLS: srv.ClientTLS(), Prefix: prefix, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func wantErr(t *testing.T, err error, target error, words ...string) {
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

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		words []string
	}{
		{Config{}, []string{"endpoints"}},
		{Config{Endpoints: []string{"127.0.0.1:2379"}}, []string{"endpoints[0]", "127.0.0.1:2379"}},
		{Config{Endpoints: []string{"http://127.0.0.1:1", "ftp://x"}}, []string{"endpoints[1]", "ftp://x"}},
		{Config{Endpoints: []string{"https://127.0.0.1:1"}}, []string{"endpoints[0]", "https", "tls"}},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: -time.Second}, []string{"dial timeout", "-1s"}},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, RequestTimeout: -2 * time.Second}, []string{"request timeout", "-2s"}},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, Prefix: "//"}, []string{"prefix", `"//"`}},
	} {
		_, err := Open(t.Context(), tc.cfg)
		wantErr(t, err, errdefs.ErrInvalid, tc.words...)
	}
}

func TestOpenUnreachable(t *testing.T) {
	start := time.Now()
	_, err := Open(t.Context(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:1") {
		t.Fatalf("open of a dead endpoint: %v, want an error naming it", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("open of a dead endpoint took %s, dial timeout is 300ms", d)
	}
}

func TestGetListCAS(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "cnm-a/")
	other := open(t, srv, "cnm-b/")
	ctx := t.Context()

	_, err := s.Get(ctx, "nets/x")
	wantErr(t, err, store.ErrNotFound, `"nets/x"`)
	_, err = s.Get(ctx, "")
	wantErr(t, err, errdefs.ErrInvalid, "key")

	r1, err := s.CompareAndSwap(ctx, "nets/x", 0, []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.CompareAndSwap(ctx, "nets/x", 0, []byte("again"))
	wantErr(t, err, store.ErrConflict, `"nets/x"`, fmt.Sprint(r1), "expected 0")
	_, err = s.CompareAndSwap(ctx, "nets/x", r1+100, []byte("stale"))
	wantErr(t, err, store.ErrConflict, `"nets/x"`, fmt.Sprint(r1+100))
	r2, err := s.CompareAndSwap(ctx, "nets/x", r1, []byte("2"))
	if err != nil || r2 <= r1 {
		t.Fatalf("cas with the right revision: %d, %v", r2, err)
	}
	_, err = s.CompareAndSwap(ctx, "nets/y", 5, []byte("?"))
	wantErr(t, err, store.ErrConflict, `"nets/y"`, "revision 0, expected 5")
	kv, err := s.Get(ctx, "nets/x")
	if err != nil || string(kv.Value) != "2" || kv.Revision != r2 {
		t.Fatalf("get: %+v, %v; want value 2 at revision %d", kv, err, r2)
	}

	for _, k := range []string{"nets/c", "nets/a", "nets/b", "netsz", "eps/a"} {
		if err := s.Txn(ctx, store.Put(k, []byte(k))); err != nil {
			t.Fatal(err)
		}
	}
	kvs, err := s.List(ctx, "nets/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	if got := strings.Join(keys, " "); got != "nets/a nets/b nets/c nets/x" {
		t.Fatalf("list nets/: %s", got)
	}
	all, err := s.List(ctx, "")
	if err != nil || len(all) != 6 {
		t.Fatalf("list of everything: %d keys, %v; want 6", len(all), err)
	}
	// Another prefix sees none of it.
	if kvs, err := other.List(ctx, ""); err != nil || len(kvs) != 0 {
		t.Fatalf("store with another prefix lists %d keys, %v", len(kvs), err)
	}
}

func TestTxnAllOrNothing(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "t/")
	ctx := t.Context()

	if err := s.Txn(ctx, store.Put("a", []byte("1")), store.Put("b", []byte("1")), store.Del("missing"), store.Put("a", []byte("2"))); err != nil {
		t.Fatalf("txn: %v", err)
	}
	if kv, _ := s.Get(ctx, "a"); string(kv.Value) != "2" {
		t.Fatalf("a = %q, the last op on a key wins", kv.Value)
	}
	// A failed condition writes nothing.
	kb, _ := s.Get(ctx, "b")
	_, err := s.TxnIf(ctx, []Cond{{Key: "b", Revision: kb.Revision}, {Key: "a", Revision: 1}},
		Op{Key: "c", Value: []byte("x")}, Op{Key: "b", Delete: true})
	wantErr(t, err, store.ErrConflict, `"a"`)
	if _, err := s.Get(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("c written by a failed txn: %v", err)
	}
	if _, err := s.Get(ctx, "b"); err != nil {
		t.Fatalf("b deleted by a failed txn: %v", err)
	}
	// Bad input: nothing written, the field named.
	err = s.Txn(ctx, store.Put("d", nil), store.Put("", nil))
	wantErr(t, err, errdefs.ErrInvalid, "ops[1].key")
	_, err = s.TxnIf(ctx, nil, Op{Key: "e", Prefix: true})
	wantErr(t, err, errdefs.ErrInvalid, "ops[0]", `"e"`, "prefix")
	if _, err := s.Get(ctx, "d"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("d written by a refused txn: %v", err)
	}
	// The server refuses a put under a lease it no longer has: the whole
	// transaction fails, the other put included.
	l, err := s.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.lease.Revoke(ctx, l.id); err != nil { // behind the Lease's back
		t.Fatal(err)
	}
	_, err = s.TxnIf(ctx, nil, Op{Key: "f", Value: []byte("x")}, Op{Key: "g", Value: []byte("x"), Lease: l})
	wantErr(t, err, ErrLeaseLost)
	if _, err := s.Get(ctx, "f"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("f written by a failed txn: %v", err)
	}
	// Prefix delete.
	if _, err := s.TxnIf(ctx, nil, Op{Key: "", Delete: true, Prefix: true}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("prefix delete of everything: %v, want refused", err)
	}
	if _, err := s.TxnIf(ctx, nil, Op{Key: "a", Delete: true, Prefix: true}); err != nil {
		t.Fatal(err)
	}
	if kvs, _ := s.List(ctx, ""); len(kvs) != 1 || kvs[0].Key != "b" {
		t.Fatalf("after deleting prefix a: %v", kvs)
	}
}

func TestClose(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "c/")
	w := s.Watch(t.Context(), "", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	_, err := s.Get(context.Background(), "k")
	wantErr(t, err, ErrClosed, `"k"`)
	select {
	case _, ok := <-w:
		for ok {
			_, ok = <-w
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch still open after close")
	}
}

func TestTLS(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{TLS: true})
	s := open(t, srv, "tls/")
	if _, err := s.CompareAndSwap(t.Context(), "k", 0, []byte("v")); err != nil {
		t.Fatalf("put over tls: %v", err)
	}
	// Without the client certificate the server refuses us.
	cfg := srv.ClientTLS()
	cfg.Certificates = nil
	if _, err := Open(t.Context(), Config{Endpoints: srv.Endpoints(), TLS: cfg, DialTimeout: 500 * time.Millisecond}); err == nil {
		t.Fatal("open without a client certificate succeeded")
	}
	// Plain text to a TLS server fails.
	plain := strings.Replace(srv.Endpoints()[0], "https://", "http://", 1)
	if _, err := Open(t.Context(), Config{Endpoints: []string{plain}, DialTimeout: 500 * time.Millisecond}); err == nil {
		t.Fatal("plain-text open of a tls server succeeded")
	}
}

// TestTxnIfPrefix: a prefix condition holds only while no key has the
// prefix; a failed one writes nothing and names the prefix.
func TestTxnIfPrefix(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "px/")
	other := open(t, srv, "py/") // its keys are outside s's prefix
	ctx := t.Context()

	for _, k := range []string{"networks/n1", "networks/n2", "endpoints/n1/ep1", "endpoints/n2x/ep1", "endpoints/n3/"} {
		if err := s.Txn(ctx, store.Put(k, []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Txn(ctx, store.Put("endpoints/n2/ep9", nil)); err != nil {
		t.Fatal(err)
	}
	rev := func(k string) uint64 {
		kv, err := s.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		return kv.Revision
	}
	del := func(id string) (uint64, error) {
		return s.TxnIf(ctx,
			[]Cond{{Key: "networks/" + id, Revision: rev("networks/" + id)}, {Key: "endpoints/" + id + "/", Prefix: true}},
			Op{Key: "networks/" + id, Delete: true}, Op{Key: "log/" + id, Value: []byte("deleted")})
	}

	// n1 has an endpoint: refused, nothing written.
	_, err := del("n1")
	wantErr(t, err, store.ErrConflict, `keys under "endpoints/n1/" exist`, "endpoints/n1/ep1")
	if _, err := s.Get(ctx, "networks/n1"); err != nil {
		t.Fatalf("networks/n1 deleted by a failed txn: %v", err)
	}
	if _, err := s.Get(ctx, "log/n1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("log/n1 written by a failed txn: %v", err)
	}
	// n2 has none (endpoints/n2x/ is not under endpoints/n2/, and the other
	// store's keys are not s's): done, both ops applied.
	r, err := del("n2")
	if err != nil {
		t.Fatalf("prefix condition on an empty prefix: %v", err)
	}
	if _, err := s.Get(ctx, "networks/n2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("networks/n2 after the txn: %v", err)
	}
	if kv, err := s.Get(ctx, "log/n2"); err != nil || kv.Revision != r {
		t.Fatalf("log/n2 after the txn: %+v, %v (txn revision %d)", kv, err, r)
	}
	// A key equal to the prefix is under it.
	_, err = s.TxnIf(ctx, []Cond{{Key: "endpoints/n3/", Prefix: true}}, Op{Key: "x", Value: nil})
	wantErr(t, err, store.ErrConflict, `"endpoints/n3/"`)
	// The endpoint goes: the condition holds.
	if err := s.Txn(ctx, store.Del("endpoints/n1/ep1")); err != nil {
		t.Fatal(err)
	}
	if _, err := del("n1"); err != nil {
		t.Fatalf("after the last endpoint went: %v", err)
	}
	// A prefix condition with a revision is refused before anything is sent.
	_, err = s.TxnIf(ctx, []Cond{{Key: "x"}, {Key: "endpoints/n9/", Prefix: true, Revision: 5}}, Op{Key: "y", Value: nil})
	wantErr(t, err, errdefs.ErrInvalid, "conds[1]", `"endpoints/n9/"`, "revision 5")
	_, err = s.TxnIf(ctx, []Cond{{Key: "", Prefix: true}}, Op{Key: "y", Value: nil})
	wantErr(t, err, errdefs.ErrInvalid, "conds[0].key")
	if _, err := s.Get(ctx, "y"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("y written by a refused txn: %v", err)
	}
}
