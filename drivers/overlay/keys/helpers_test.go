package keys

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

// host is one simulated host: its own etcd client and Ring.
type host struct {
	st     *etcdstore.Store
	kv     *countingKV
	ring   *Ring
	clock  *clock
	config Config
}

// newHost opens a client of srv and a Ring on it; cfg's Store is set, and
// its Now when clk is not nil.
func newHost(t testing.TB, srv *etcdtest.Server, cfg Config, clk *clock) *host {
	t.Helper()
	st := openStore(t, srv)
	h := &host{st: st, kv: &countingKV{KV: st}, clock: clk}
	cfg.Store = h.kv
	if clk != nil {
		cfg.Now = clk.Now
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.ring, h.config = r, cfg
	return h
}

func openStore(t testing.TB, srv *etcdtest.Server) *etcdstore.Store {
	t.Helper()
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "cnm/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// twoHosts starts an etcd and two hosts on it with cfg.
func twoHosts(t testing.TB, cfg Config, clk *clock) (*etcdtest.Server, [2]*host) {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Options{})
	return srv, [2]*host{newHost(t, srv, cfg, clk), newHost(t, srv, cfg, clk)}
}

// countingKV counts the writes that succeeded through it.
type countingKV struct {
	KV
	writes atomic.Int64
}

func (c *countingKV) TxnIf(ctx context.Context, conds []etcdstore.Cond, ops ...etcdstore.Op) (uint64, error) {
	rev, err := c.KV.TxnIf(ctx, conds, ops...)
	if err == nil {
		c.writes.Add(1)
	}
	return rev, err
}

// gatedKV holds back the start of every watch until open is closed.
type gatedKV struct {
	KV
	open     chan struct{}
	watching chan uint64 // receives each watch's after revision as it is asked for
}

func (g *gatedKV) Watch(ctx context.Context, prefix string, after uint64) <-chan etcdstore.WatchBatch {
	g.watching <- after
	out := make(chan etcdstore.WatchBatch)
	go func() {
		defer close(out)
		select {
		case <-g.open:
		case <-ctx.Done():
			return
		}
		for b := range g.KV.Watch(ctx, prefix, after) {
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// breakableKV counts the listings, ends the running watch with an error
// when told to, and holds back every watch after the first until resume is
// closed, so that the test can change the sets while the watch is broken.
type breakableKV struct {
	KV
	snapshots atomic.Int64
	watches   atomic.Int64
	watching  chan uint64   // receives each watch's after revision as it is asked for
	fail      chan struct{} // a send ends the running watch with an error
	resume    chan struct{} // closed: the watches after the first start
}

func (b *breakableKV) Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error) {
	b.snapshots.Add(1)
	return b.KV.Snapshot(ctx, prefix)
}

func (b *breakableKV) Watch(ctx context.Context, prefix string, after uint64) <-chan etcdstore.WatchBatch {
	n := b.watches.Add(1)
	out := make(chan etcdstore.WatchBatch)
	select {
	case b.watching <- after:
	case <-ctx.Done():
		close(out)
		return out
	}
	go func() {
		defer close(out)
		if n > 1 {
			select {
			case <-b.resume:
			case <-ctx.Done():
				return
			}
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel() // ends the inner watch when this one ends
		in := b.KV.Watch(ctx, prefix, after)
		for {
			select {
			case batch, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- batch:
				case <-ctx.Done():
					return
				}
			case <-b.fail:
				select {
				case out <- etcdstore.WatchBatch{Err: errors.New("injected watch failure")}:
				case <-ctx.Done():
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// view is what a consumer of Watch knows: the sets by network.
type view struct {
	t    testing.TB
	mu   sync.Mutex
	sets map[string]Set
	errs []error
	log  []Update      // every update, in order
	ch   chan struct{} // receives after each update
	done chan struct{} // closed when the watch's channel is
}

// watchView applies every update of r's watch to a view until the test ends.
func watchView(t testing.TB, r *Ring) *view {
	ctx, cancel := context.WithCancel(context.Background())
	v := &view{t: t, sets: map[string]Set{}, ch: make(chan struct{}, 1), done: make(chan struct{})}
	t.Cleanup(func() { cancel(); <-v.done })
	go func() {
		defer close(v.done)
		for u := range r.Watch(ctx) {
			v.mu.Lock()
			v.log = append(v.log, u)
			switch {
			case u.Err != nil:
				v.errs = append(v.errs, u.Err)
			case u.Deleted:
				delete(v.sets, u.NetworkID)
			default:
				if old, ok := v.sets[u.NetworkID]; ok && old.Revision >= u.Set.Revision {
					t.Errorf("update of %s at revision %d after one at %d", u.NetworkID, u.Set.Revision, old.Revision)
				}
				v.sets[u.NetworkID] = u.Set
			}
			v.mu.Unlock()
			select {
			case v.ch <- struct{}{}:
			default:
			}
		}
	}()
	return v
}

// waitFor waits up to 10 seconds for ok to hold of the view's sets.
func (v *view) waitFor(what string, ok func(sets map[string]Set) bool) {
	v.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		v.mu.Lock()
		done := ok(v.sets)
		v.mu.Unlock()
		if done {
			return
		}
		select {
		case <-v.ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			v.mu.Lock()
			defer v.mu.Unlock()
			v.t.Fatalf("watch: waited 10s for %s; have %v", what, v.sets)
		}
	}
}

// get returns the view's set of network id.
func (v *view) get(id string) (Set, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.sets[id]
	return s, ok
}

// sameSet fails t unless a and b are the same set, material included.
func sameSet(t testing.TB, a, b Set) {
	t.Helper()
	if a.NetworkID != b.NetworkID || a.Primary != b.Primary || a.Revision != b.Revision || len(a.Keys) != len(b.Keys) {
		t.Fatalf("sets differ:\n%v\n%v", a, b)
	}
	for i := range a.Keys {
		ka, kb := a.Keys[i], b.Keys[i]
		if ka.Generation != kb.Generation || ka.SPI != kb.SPI || !ka.Created.Equal(kb.Created) ||
			string(ka.Material()) != string(kb.Material()) {
			t.Fatalf("keys[%d] differ (material compared, not shown):\n%v\n%v", i, a, b)
		}
	}
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

// put writes a raw record for network id.
func put(t testing.TB, st *etcdstore.Store, id string, value string) {
	t.Helper()
	if err := st.Txn(t.Context(), store.Put(Prefix+id, []byte(value))); err != nil {
		t.Fatal(err)
	}
}
