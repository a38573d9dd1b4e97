// Package etcdstore is cnm's global store: an implementation of
// [store.Store] on an etcd cluster (go.etcd.io/etcd/client/v3), shared by
// every host of a multi-host deployment.
//
// Beside the [store.Store] methods it offers what the overlay needs and
// bbolt cannot give:
//
//   - [Store.TxnIf]: an atomic transaction guarded by conditions on the
//     revisions of several keys, or on a prefix having no key under it
//     ([Cond].Prefix), whose writes may be attached to a lease.
//   - [Store.Snapshot] and [Store.Watch]: a consistent listing of a prefix at
//     a store revision, and a watch of the prefix that resumes after any
//     revision. When etcd has compacted the revisions a watch still needed,
//     the watch lists the prefix again and delivers the listing as a
//     [WatchBatch] with Resync set, so a consumer never misses a change
//     without being told.
//   - [Store.GrantLease]: a lease kept alive in the background; keys written
//     under it vanish when it is revoked or expires (its host died or lost
//     etcd for longer than the TTL). A lease that is lost is reported on
//     [Lease.Lost]. [Store.AdoptLease] takes over a lease an earlier client
//     granted (the same host's previous run) while it is still alive.
//
// Revisions are etcd's modification revisions: a key's [store.KV].Revision
// is the store-wide revision of its last write, and a compare and swap on
// revision 0 means "only if the key does not exist".
//
// Errors wrap [store.ErrNotFound], [store.ErrConflict], [ErrLeaseLost],
// [ErrClosed] or the etcd client's own error, and name the key.
package etcdstore
