package global

import (
	"context"
	"strings"
	"time"

	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// The pools a host has used are cached, so that the per-address path does
// not read etcd. A watch of the pool keys drops a cached pool as soon as
// any host releases it, so a stale pool ID is not served from blocks that
// no longer exist in etcd. Pool keys are made of the pool IDs, so the
// release of a pool drops that pool alone, not another of the same subnet.

// startWatch starts the watch of the pool keys once, from revision after.
func (a *Allocator) startWatch(after uint64) {
	a.watchOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		a.stopWatch = cancel
		go a.watchPools(ctx, after)
	})
}

// watchPools drops cached pools that were released or replaced, until ctx
// ends or the store closes.
func (a *Allocator) watchPools(ctx context.Context, after uint64) {
	defer close(a.watchDone)
	etcdstore.Follow(ctx, a.cfg.Store, poolPrefix, after, 100*time.Millisecond, nil, func(b etcdstore.WatchBatch) bool {
		if b.Resync {
			live := make(map[string]bool, len(b.Snapshot))
			for _, kv := range b.Snapshot {
				live[strings.TrimPrefix(kv.Key, poolPrefix)] = true
			}
			a.dropPools(b.Revision, func(key string) bool { return !live[key] })
			return true
		}
		for _, ev := range b.Events {
			if ev.Type == etcdstore.EventDelete {
				gone := strings.TrimPrefix(ev.KV.Key, poolPrefix)
				a.dropPools(ev.KV.Revision, func(key string) bool { return key == gone })
			}
		}
		return true
	})
}

// dropPools forgets the cached pools whose pool key gone selects and whose
// record is older than rev, and refuses further calls on them; for the
// pools gone selects that are being looked up, it remembers rev, so that a
// lookup that read such a record before the watch saw it go does not
// cache it.
func (a *Allocator) dropPools(rev uint64, gone func(poolKey string) bool) {
	a.mu.Lock()
	for key := range a.loading {
		if gone(key) {
			a.deleted[key] = max(a.deleted[key], rev)
		}
	}
	var dropped []*gpool
	for id, p := range a.pools {
		if gone(p.key) && p.rev < rev {
			delete(a.pools, id)
			dropped = append(dropped, p)
		}
	}
	a.mu.Unlock()
	for _, p := range dropped {
		p.sp.mu.Lock()
		p.sp.released = true
		clear(p.sp.blocks)
		p.sp.order = nil
		p.sp.mu.Unlock()
	}
}

// Close stops the allocator's watch of the pools. It does not return blocks
// (see [Allocator.ReturnEmptyBlocks]; the others end with the lease). The
// allocator must not be used afterwards. Safe to call twice.
func (a *Allocator) Close() error {
	a.watchOnce.Do(func() { close(a.watchDone) }) // never started
	if a.stopWatch != nil {
		a.stopWatch()
	}
	<-a.watchDone
	return nil
}
