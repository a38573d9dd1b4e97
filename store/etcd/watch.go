package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
)

// EventType says what an [Event] is.
type EventType int

const (
	// EventPut is a key written (created or changed).
	EventPut EventType = iota + 1
	// EventDelete is a key deleted, by a delete or by the end of its lease.
	EventDelete
)

// String returns "put" or "delete".
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of a watched key. KV.Revision is the revision of the
// change (for a delete, the revision of the delete); KV.Value is nil for a
// delete.
type Event struct {
	Type EventType
	KV   store.KV
}

// WatchBatch is what a watch delivers: the changes of one revision, or, when
// Resync is set, a fresh listing that replaces everything the consumer knew
// about the prefix.
type WatchBatch struct {
	// Events are the changes, in revision order. Empty when Resync is set.
	Events []Event
	// Resync is set when the watch could not resume where it was because
	// etcd had compacted the revisions it needed: changes were missed, and
	// Snapshot holds every key of the prefix at Revision instead.
	Resync bool
	// Snapshot is the listing of the prefix at Revision, sorted by key, when
	// Resync is set.
	Snapshot []store.KV
	// CompactRevision is, when Resync is set, the revision etcd had compacted
	// up to.
	CompactRevision uint64
	// Revision is the store revision the consumer is up to date with after
	// this batch: a later watch resumes with it as its after argument.
	Revision uint64
	// Err, set on the last batch only, says why the watch ended early (not
	// set when the context was cancelled or the store closed).
	Err error
}

// Watch watches every key with the prefix and delivers the changes made
// after revision after (0: from now on) on the returned channel, in order,
// until ctx is cancelled or the store closed; then it closes the channel.
//
// A watch never misses a change silently: when etcd has compacted revisions
// the watch still needed (after is too old, or the watch fell behind), it
// lists the prefix again and delivers the listing with Resync set, then goes
// on from the listing's revision. An error it cannot get over is delivered
// in a last batch's Err.
func (s *Store) Watch(ctx context.Context, prefix string, after uint64) <-chan WatchBatch {
	out := make(chan WatchBatch, 16)
	go s.watch(ctx, prefix, after, out)
	return out
}

// Watcher is what [Follow] needs of a store: [Store.Watch].
type Watcher interface {
	Watch(ctx context.Context, prefix string, after uint64) <-chan WatchBatch
}

// Follow hands the batches of a watch of prefix after revision after to
// apply, in order, until ctx ends, the store closes or apply returns
// false. A watch that ends with an error is reported to failed (when not
// nil) and, retry later, started again from the revision of the last batch
// applied: nothing is missed, nothing applied twice.
func Follow(ctx context.Context, w Watcher, prefix string, after uint64, retry time.Duration, failed func(error), apply func(WatchBatch) bool) {
	for {
		var err error
		for b := range w.Watch(ctx, prefix, after) {
			if b.Err != nil {
				err = b.Err
				break
			}
			if !apply(b) {
				return
			}
			after = b.Revision
		}
		if err == nil || ctx.Err() != nil {
			return // cancelled, or the store closed
		}
		if failed != nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// Lister is what [ListAndFollow] needs of a store: [Store.Snapshot] and
// [Store.Watch].
type Lister interface {
	Watcher
	Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error)
}

// ListAndFollow is [Follow] from a listing: with after 0 it first lists
// prefix (again every retry while that fails, each failure reported to
// failed) and hands the listing to apply as a batch with Resync set and no
// CompactRevision, then follows from the listing's revision. It also ends
// when the store closes before a listing works.
func ListAndFollow(ctx context.Context, s Lister, prefix string, after uint64, retry time.Duration, failed func(error), apply func(WatchBatch) bool) {
	for after == 0 {
		kvs, rev, err := s.Snapshot(ctx, prefix)
		if err == nil {
			if !apply(WatchBatch{Resync: true, Snapshot: kvs, Revision: rev}) {
				return
			}
			after = rev
			break
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) || errors.Is(err, errdefs.ErrClosed) {
			return
		}
		if failed != nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
	Follow(ctx, s, prefix, after, retry, failed, apply)
}

func (s *Store) watch(ctx context.Context, prefix string, after uint64, out chan<- WatchBatch) {
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // end the watch when the store closes
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	send := func(b WatchBatch) bool {
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		opts := prefixOpts(prefix, clientv3.WithPrevKV())
		if after > 0 {
			opts = append(opts, clientv3.WithRev(int64(after)+1))
		}
		wch := s.watcher.Watch(clientv3.WithRequireLeader(ctx), prefixKey(prefix), opts...)
		restart := false
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, rpctypes.ErrCompacted) {
					kvs, rev, lerr := s.Snapshot(ctx, prefix)
					if lerr != nil {
						if ctx.Err() == nil {
							send(WatchBatch{Revision: after, Err: fmt.Errorf("watch %q: resync after compaction: %w", prefix, lerr)})
						}
						return
					}
					if !send(WatchBatch{Resync: true, Snapshot: kvs, CompactRevision: uint64(resp.CompactRevision), Revision: rev}) {
						return
					}
					after = rev
					restart = true
					break
				}
				if errors.Is(err, rpctypes.ErrNoLeader) {
					select { // the cluster lost its leader: watch again from where we were
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
						return
					}
					restart = true
					break
				}
				send(WatchBatch{Revision: after, Err: fmt.Errorf("watch %q after revision %d: %w", prefix, after, err)})
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			b := WatchBatch{Events: make([]Event, len(resp.Events))}
			for i, ev := range resp.Events {
				e := Event{Type: EventPut, KV: toKV(ev.Kv)}
				if ev.Type == clientv3.EventTypeDelete {
					e.Type = EventDelete
					e.KV.Value = nil
				}
				b.Events[i] = e
			}
			after = uint64(resp.Events[len(resp.Events)-1].Kv.ModRevision)
			b.Revision = after
			if !send(b) {
				return
			}
		}
		if !restart {
			return // ctx cancelled or store closed
		}
	}
}
