package keys

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// watchRetry is how long Watch waits before it tries again after listing
// the sets failed, or after its watch failed (it then resumes the watch
// where it was).
const watchRetry = 500 * time.Millisecond

// Update is a change of one network's key set, delivered by [Ring.Watch].
type Update struct {
	// NetworkID is the network whose set changed.
	NetworkID string
	// Set is the network's set as it is now; only its NetworkID is set
	// when Deleted or Err is.
	Set Set
	// Deleted is set when the set was deleted (the network is gone).
	Deleted bool
	// Err is set when the set's record cannot be read (it wraps
	// [errdefs.ErrInvalid] or [errdefs.ErrNotSupported] and names the
	// field at fault); the consumer keeps what it had for the network.
	Err error
}

// Watch delivers every key set on the returned channel, then every change
// of one, until ctx ends (or the store closes); then it closes the
// channel. It starts with the sets that exist, one Update each (listing
// them again until it works); then it watches the changes made after that
// listing. When the watch fails, it is started again from the last change
// delivered, so nothing is missed or delivered twice; when etcd has
// compacted changes the watch missed, it delivers what changed meanwhile
// (sets whose record changed, and deletions) from a fresh listing. So a
// consumer that applies every Update holds the same sets as the store, as
// every other host's consumer does.
//
// Each Set delivered for a network has a higher Revision than the one
// before. Failures it retries are logged to Config.Logger.
func (r *Ring) Watch(ctx context.Context) <-chan Update {
	out := make(chan Update)
	go r.watch(ctx, out)
	return out
}

func (r *Ring) watch(ctx context.Context, out chan<- Update) {
	defer close(out)
	send := func(u Update) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	known := map[string]uint64{} // network ID → revision of the record delivered
	// sync delivers what differs between the listing kvs and known.
	sync := func(kvs []store.KV) bool {
		listed := make(map[string]bool, len(kvs))
		for _, kv := range kvs {
			id, ok := networkOf(kv.Key)
			if !ok {
				continue
			}
			listed[id] = true
			if known[id] == kv.Revision {
				continue
			}
			known[id] = kv.Revision
			if !send(r.update(id, kv)) {
				return false
			}
		}
		for id := range known {
			if !listed[id] {
				delete(known, id)
				if !send(Update{NetworkID: id, Set: Set{NetworkID: id}, Deleted: true}) {
					return false
				}
			}
		}
		return true
	}

	failed := func(err error) {
		r.cfg.Logger.Warn("encryption keys: listing or watch failed; retrying", "prefix", Prefix, "retry", watchRetry, "error", err)
	}
	// It ends when ctx ends, the store closes (its watch then ends without
	// an error) or apply returns false (ctx ended while sending).
	etcdstore.ListAndFollow(ctx, r.cfg.Store, Prefix, 0, watchRetry, failed, func(b etcdstore.WatchBatch) bool {
		if b.Resync {
			if b.CompactRevision != 0 {
				r.cfg.Logger.Info("encryption keys: watch resynced after compaction",
					"compacted", b.CompactRevision, "revision", b.Revision)
			}
			return sync(b.Snapshot)
		}
		for _, ev := range b.Events {
			id, ok := networkOf(ev.KV.Key)
			if !ok {
				continue
			}
			u := Update{NetworkID: id, Set: Set{NetworkID: id}, Deleted: true}
			if ev.Type == etcdstore.EventDelete {
				delete(known, id)
			} else {
				known[id] = ev.KV.Revision
				u = r.update(id, ev.KV)
			}
			if !send(u) {
				return false
			}
		}
		return true
	})
}

// update is the Update of a record read from the store.
func (r *Ring) update(id string, kv store.KV) Update {
	s, err := decode(id, kv.Value, kv.Revision)
	if err != nil {
		return Update{NetworkID: id, Set: Set{NetworkID: id}, Err: fmt.Errorf("encryption keys of network %s: watch: %w", id, err)}
	}
	return Update{NetworkID: id, Set: s}
}

// networkOf returns the network ID of a key under Prefix, or false for a
// key that is not a key set's.
func networkOf(key string) (string, bool) {
	id, ok := strings.CutPrefix(key, Prefix)
	return id, ok && checkID(id) == nil
}
