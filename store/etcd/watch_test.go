package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

func next(t *testing.T, w <-chan WatchBatch) WatchBatch {
	t.Helper()
	select {
	case b, ok := <-w:
		if !ok {
			t.Fatal("watch closed")
		}
		if b.Err != nil {
			t.Fatalf("watch ended: %v", b.Err)
		}
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no watch batch within 5s")
	}
	return WatchBatch{}
}

// collect reads batches until it has n events.
func collect(t *testing.T, w <-chan WatchBatch, n int) []Event {
	t.Helper()
	var evs []Event
	for len(evs) < n {
		b := next(t, w)
		if b.Resync {
			t.Fatalf("unexpected resync: %+v", b)
		}
		evs = append(evs, b.Events...)
	}
	return evs
}

func TestWatchResumes(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "w/")
	ctx := t.Context()

	r1, _ := s.CompareAndSwap(ctx, "peers/a", 0, []byte("1"))
	r2, _ := s.CompareAndSwap(ctx, "peers/b", 0, []byte("1"))
	if err := s.Txn(ctx, store.Put("other/x", nil), store.Del("peers/a")); err != nil {
		t.Fatal(err)
	}
	// Everything after r1, nothing outside the prefix.
	w := s.Watch(ctx, "peers/", r1)
	evs := collect(t, w, 2)
	if evs[0].Type != EventPut || evs[0].KV.Key != "peers/b" || evs[0].KV.Revision != r2 {
		t.Fatalf("first event %+v, want put of peers/b at %d", evs[0], r2)
	}
	if evs[1].Type != EventDelete || evs[1].KV.Key != "peers/a" || evs[1].KV.Value != nil {
		t.Fatalf("second event %+v, want delete of peers/a", evs[1])
	}
	// A live change arrives, and the batch says where to resume.
	r4, _ := s.CompareAndSwap(ctx, "peers/c", 0, []byte("3"))
	b := next(t, w)
	if len(b.Events) != 1 || b.Events[0].KV.Key != "peers/c" || string(b.Events[0].KV.Value) != "3" || b.Revision != r4 {
		t.Fatalf("live batch %+v, want peers/c=3 at %d", b, r4)
	}
	// Snapshot + watch after its revision misses nothing.
	kvs, rev, err := s.Snapshot(ctx, "peers/")
	if err != nil || len(kvs) != 2 || rev < r4 {
		t.Fatalf("snapshot: %v at %d, %v", kvs, rev, err)
	}
	r5, _ := s.CompareAndSwap(ctx, "peers/d", 0, nil)
	w2 := s.Watch(ctx, "peers/", rev)
	if evs := collect(t, w2, 1); evs[0].KV.Key != "peers/d" || evs[0].KV.Revision != r5 {
		t.Fatalf("watch after the snapshot: %+v", evs)
	}
}

func TestWatchResyncsAfterCompaction(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "wc/")
	ctx := t.Context()

	old, _ := s.CompareAndSwap(ctx, "peers/a", 0, []byte("1"))
	s.CompareAndSwap(ctx, "peers/b", 0, []byte("1"))
	if err := s.Txn(ctx, store.Del("peers/a")); err != nil {
		t.Fatal(err)
	}
	last, _ := s.CompareAndSwap(ctx, "peers/c", 0, []byte("1"))
	srv.Compact(t, last)

	// A consumer that was up to date at old resumes: it missed the delete
	// of peers/a, so it is told to resync, with the current state.
	w := s.Watch(ctx, "peers/", old)
	b := next(t, w)
	if !b.Resync || b.CompactRevision == 0 || b.Revision < last {
		t.Fatalf("first batch after compaction %+v, want a resync at >= %d", b, last)
	}
	var keys []string
	for _, kv := range b.Snapshot {
		keys = append(keys, kv.Key)
	}
	if len(keys) != 2 || keys[0] != "peers/b" || keys[1] != "peers/c" {
		t.Fatalf("resync snapshot %v, want peers/b peers/c", keys)
	}
	// And it goes on watching from there.
	r, _ := s.CompareAndSwap(ctx, "peers/d", 0, nil)
	if evs := collect(t, w, 1); evs[0].KV.Key != "peers/d" || evs[0].KV.Revision != r {
		t.Fatalf("event after resync: %+v", evs)
	}
}

func TestLease(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "l/")
	ctx := t.Context()

	_, err := s.GrantLease(ctx, 500*time.Millisecond)
	wantErr(t, err, errdefs.ErrInvalid, "ttl", "500ms")
	_, err = s.PutWithLease(ctx, "k", nil, nil)
	wantErr(t, err, errdefs.ErrInvalid, "lease", `"k"`)

	// Kept alive past its TTL.
	l, err := s.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutWithLease(ctx, "hosts/a", []byte("a"), l); err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, "hosts/", 0)
	time.Sleep(2500 * time.Millisecond)
	if _, err := s.Get(ctx, "hosts/a"); err != nil || l.Err() != nil {
		t.Fatalf("key of a kept-alive lease after 2.5s: %v (lease: %v)", err, l.Err())
	}

	// The host stops renewing (it died, or lost etcd): the key expires,
	// watchers see it go, and the lease reports its loss.
	l.cancel()
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("lost lease not reported")
	}
	wantErr(t, l.Err(), ErrLeaseLost)
	evs := collect(t, w, 1)
	if evs[0].Type != EventDelete || evs[0].KV.Key != "hosts/a" {
		t.Fatalf("event at lease expiry: %+v", evs[0])
	}
	_, err = s.PutWithLease(ctx, "hosts/b", nil, l)
	wantErr(t, err, ErrLeaseLost, `"hosts/b"`)

	// Revoke removes the keys at once.
	l2, err := s.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TxnIf(ctx, []Cond{{Key: "hosts/c"}}, Op{Key: "hosts/c", Lease: l2}, Op{Key: "hosts/d", Lease: l2}); err != nil {
		t.Fatal(err)
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	<-l2.Lost()
	wantErr(t, l2.Err(), ErrLeaseLost, "revoked")
	if kvs, _ := s.List(ctx, "hosts/"); len(kvs) != 0 {
		t.Fatalf("keys left after revoke: %v", kvs)
	}

	// A lease revoked elsewhere (an operator, another client) is reported.
	l3, err := s.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.lease.Revoke(ctx, l3.id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l3.Lost():
		if !errors.Is(l3.Err(), ErrLeaseLost) {
			t.Fatalf("lease revoked elsewhere: %v", l3.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lease revoked elsewhere not reported")
	}
}

// TestEtcdDown: with etcd gone, requests fail within the request timeout,
// naming the key, and the lease is reported lost within its TTL.
func TestEtcdDown(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	proxy := etcdtest.NewProxy(t, srv)
	s, err := Open(t.Context(), Config{Endpoints: []string{proxy.Endpoint()}, RequestTimeout: 300 * time.Millisecond, Prefix: "down/"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := s.GrantLease(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the first renewal (before it, the client waits dial timeout + 1s)
	t0 := time.Now()
	proxy.Cut()
	start := time.Now()
	_, err = s.Get(t.Context(), "nets/x")
	if err == nil || !strings.Contains(err.Error(), `"nets/x"`) {
		t.Fatalf("get with etcd down: %v, want an error naming the key", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("get with etcd down took %s, request timeout is 300ms", d)
	}
	select {
	case <-l.Lost():
		t.Logf("lease lost %s after etcd went away: %v", time.Since(t0).Round(time.Millisecond), l.Err())
		wantErr(t, l.Err(), ErrLeaseLost)
	case <-time.After(5 * time.Second):
		t.Fatal("lease not reported lost with etcd down")
	}
}

// TestAdoptLease: a lease granted by a client that went away (a restarted
// controller) is taken over by a new client and kept alive, with its keys;
// a lease that ended cannot be adopted.
func TestAdoptLease(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	ctx := t.Context()

	first := open(t, srv, "al/")
	l1, err := first.GrantLease(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.PutWithLease(ctx, "hosts/a", []byte("a"), l1); err != nil {
		t.Fatal(err)
	}
	_ = first.Close() // no revoke: the lease lives on for its TTL

	s := open(t, srv, "al/")
	l, err := s.AdoptLease(ctx, l1.ID())
	if err != nil {
		t.Fatalf("adopt a live lease: %v", err)
	}
	if l.ID() != l1.ID() || l.TTL() != 2*time.Second || l.Err() != nil {
		t.Fatalf("adopted lease %x ttl %s err %v, want %x ttl 2s alive", l.ID(), l.TTL(), l.Err(), l1.ID())
	}
	time.Sleep(3500 * time.Millisecond) // well past the TTL
	if _, err := s.Get(ctx, "hosts/a"); err != nil || l.Err() != nil {
		t.Fatalf("key of the adopted lease after 3.5s: %v (lease: %v)", err, l.Err())
	}
	if _, err := s.PutWithLease(ctx, "hosts/b", nil, l); err != nil {
		t.Fatalf("put under the adopted lease: %v", err)
	}
	// Same semantics as a granted lease: a revoke elsewhere is reported.
	if _, err := s.lease.Revoke(ctx, l.id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		wantErr(t, l.Err(), ErrLeaseLost)
	case <-time.After(5 * time.Second):
		t.Fatal("adopted lease revoked elsewhere not reported")
	}
	if kvs, _ := s.List(ctx, "hosts/"); len(kvs) != 0 {
		t.Fatalf("keys left after revoke: %v", kvs)
	}
	_, err = s.AdoptLease(ctx, l1.ID())
	wantErr(t, err, ErrLeaseLost, fmt.Sprintf("%x", l1.ID()), "expired or revoked")

	// A lease that expired with its host.
	dying := open(t, srv, "al/")
	l3, err := dying.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dying.PutWithLease(ctx, "hosts/c", nil, l3); err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, "hosts/", 0)
	_ = dying.Close()
	if evs := collect(t, w, 1); evs[0].Type != EventDelete || evs[0].KV.Key != "hosts/c" {
		t.Fatalf("event at expiry: %+v", evs[0])
	}
	_, err = s.AdoptLease(ctx, l3.ID())
	wantErr(t, err, ErrLeaseLost, fmt.Sprintf("%x", l3.ID()))

	// Never granted; not an ID.
	_, err = s.AdoptLease(ctx, 0x7fff0000deadbeef)
	wantErr(t, err, ErrLeaseLost, "7fff0000deadbeef")
	_, err = s.AdoptLease(ctx, 0)
	wantErr(t, err, errdefs.ErrInvalid, "lease id 0")
	_ = s.Close()
	_, err = s.AdoptLease(ctx, l1.ID())
	wantErr(t, err, ErrClosed)
}

// TestBackSoonAfterLongOutage: after 10 s without etcd (gRPC's own
// reconnect backoff would have grown to 4-7 s between attempts by then),
// a client writes again and its watch delivers again within 4 s of etcd's
// return (about 1.2 s here).
func TestBackSoonAfterLongOutage(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "outage/")
	ctx := t.Context()
	rev, err := s.CompareAndSwap(ctx, "k/before", 0, []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	w := s.Watch(ctx, "k/", rev)
	srv.Stop()
	time.Sleep(10 * time.Second)
	srv.Restart(t)
	back := time.Now()
	for {
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := s.CompareAndSwap(rctx, "k/after", 0, []byte("2"))
		cancel()
		if err == nil {
			break
		}
		if time.Since(back) > 4*time.Second {
			t.Fatalf("no write within 4s of etcd's return: %v", err)
		}
	}
	for {
		evs := collect(t, w, 1)
		if evs[0].KV.Key == "k/after" {
			break
		}
	}
	if d := time.Since(back); d > 4*time.Second {
		t.Fatalf("watch delivered %s after etcd's return, want within 4s", d)
	}
	t.Logf("written and watched %s after etcd's return", time.Since(back).Round(time.Millisecond))
}

// scriptedWatcher delivers, for its nth Watch, the batches of script[n],
// and records each Watch's after.
type scriptedWatcher struct {
	script [][]WatchBatch
	afters []uint64
}

func (w *scriptedWatcher) Watch(ctx context.Context, prefix string, after uint64) <-chan WatchBatch {
	out := make(chan WatchBatch, 8)
	if n := len(w.afters); n < len(w.script) {
		for _, b := range w.script[n] {
			out <- b
		}
	}
	w.afters = append(w.afters, after)
	close(out)
	return out
}

// TestFollow: a watch that ends with an error is reported and started
// again from the last revision applied; one that ends without (the store
// closed) ends Follow, as apply returning false does.
func TestFollow(t *testing.T) {
	w := &scriptedWatcher{script: [][]WatchBatch{
		{{Revision: 5}, {Revision: 6}, {Err: errors.New("lost")}},
		{{Revision: 7}},
	}}
	var applied []uint64
	var failures []error
	Follow(t.Context(), w, "p/", 4, time.Millisecond, func(err error) { failures = append(failures, err) },
		func(b WatchBatch) bool { applied = append(applied, b.Revision); return true })
	if fmt.Sprint(applied) != "[5 6 7]" || fmt.Sprint(w.afters) != "[4 6]" || len(failures) != 1 {
		t.Fatalf("applied %v, watches after %v, failures %v; want [5 6 7], [4 6], one", applied, w.afters, failures)
	}

	w = &scriptedWatcher{script: [][]WatchBatch{{{Revision: 5}, {Revision: 6}}}}
	applied = nil
	Follow(t.Context(), w, "p/", 4, time.Millisecond, nil, func(b WatchBatch) bool { applied = append(applied, b.Revision); return false })
	if fmt.Sprint(applied) != "[5]" || len(w.afters) != 1 {
		t.Fatalf("apply said stop: applied %v, watches %d", applied, len(w.afters))
	}
}

// scriptedLister is a scriptedWatcher whose listings fail with the errors
// of fails first, then answer kvs at revision rev.
type scriptedLister struct {
	scriptedWatcher
	fails []error
	kvs   []store.KV
	rev   uint64
	lists int
}

func (l *scriptedLister) Snapshot(context.Context, string) ([]store.KV, uint64, error) {
	l.lists++
	if l.lists <= len(l.fails) {
		return nil, 0, l.fails[l.lists-1]
	}
	return l.kvs, l.rev, nil
}

// TestListAndFollow: with after 0 the prefix is listed, again while that
// fails (each failure reported), the listing applied as a Resync batch,
// and the watch started after its revision; with an after, nothing is
// listed; a store closed before a listing works ends it.
func TestListAndFollow(t *testing.T) {
	l := &scriptedLister{scriptedWatcher: scriptedWatcher{script: [][]WatchBatch{{{Revision: 9}}}},
		fails: []error{errors.New("down"), errors.New("still down")}, kvs: []store.KV{{Key: "p/a"}}, rev: 8}
	var applied []WatchBatch
	var failures []error
	ListAndFollow(t.Context(), l, "p/", 0, time.Millisecond, func(err error) { failures = append(failures, err) },
		func(b WatchBatch) bool { applied = append(applied, b); return true })
	if l.lists != 3 || len(failures) != 2 || fmt.Sprint(l.afters) != "[8]" || len(applied) != 2 ||
		!applied[0].Resync || applied[0].CompactRevision != 0 || applied[0].Revision != 8 || len(applied[0].Snapshot) != 1 ||
		applied[1].Revision != 9 {
		t.Fatalf("lists %d, failures %v, watches after %v, applied %+v", l.lists, failures, l.afters, applied)
	}

	l = &scriptedLister{scriptedWatcher: scriptedWatcher{script: [][]WatchBatch{{{Revision: 9}}}}}
	ListAndFollow(t.Context(), l, "p/", 7, time.Millisecond, nil, func(WatchBatch) bool { return true })
	if l.lists != 0 || fmt.Sprint(l.afters) != "[7]" {
		t.Fatalf("with an after: lists %d, watches after %v", l.lists, l.afters)
	}

	l = &scriptedLister{fails: []error{ErrClosed}}
	ListAndFollow(t.Context(), l, "p/", 0, time.Millisecond, func(err error) { t.Errorf("reported: %v", err) },
		func(WatchBatch) bool { t.Error("applied"); return true })
	if l.lists != 1 || len(l.afters) != 0 {
		t.Fatalf("store closed: lists %d, watches %d", l.lists, len(l.afters))
	}
}

// TestLeaseKeys: a lease's keys under a prefix, without the store's prefix,
// whatever other keys and other leases' keys there are; none once deleted;
// an ended lease is ErrLeaseLost.
func TestLeaseKeys(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, srv, "lk/")
	other := open(t, srv, "other/")
	ctx := t.Context()
	l, err := s.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := s.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"eps/b", "eps/a", "blocks/x"} {
		if _, err := s.PutWithLease(ctx, k, []byte(k), l); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutWithLease(ctx, "eps/c", nil, l2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(ctx, "eps/d", 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := other.CompareAndSwap(ctx, "eps/e", 0, nil); err != nil {
		t.Fatal(err)
	}
	got, err := l.Keys(ctx, "eps/")
	if err != nil || !slices.Equal(got, []string{"eps/a", "eps/b"}) {
		t.Fatalf("keys of the lease under eps/: %q, %v", got, err)
	}
	if got, err := l.Keys(ctx, ""); err != nil || len(got) != 3 {
		t.Fatalf("every key of the lease: %q, %v", got, err)
	}
	if err := s.Txn(ctx, store.Del("eps/a"), store.Del("eps/b")); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Keys(ctx, "eps/"); err != nil || len(got) != 0 {
		t.Fatalf("keys of the lease after their deletion: %q, %v", got, err)
	}
	if err := l.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = l.Keys(ctx, "eps/")
	wantErr(t, err, ErrLeaseLost)
}
