// Package global serves the global address space ([ipam.GlobalSpace]) of
// multi-host networks from etcd, and allocates their VXLAN IDs, with block
// affinity as Calico does: etcd stays off the per-address path.
//
// A pool ([Allocator.RequestPool]) is usable by its ID on every host. Pools
// may overlap, or have the same subnet: each global (overlay) network lives
// in a network namespace of its own on every host, so two networks may use
// the same addresses and stay apart. Every pool is independent, and
// everything below is per pool, keyed by the pool's ID: its blocks, its
// reservations, the addresses handed out.
//
// Each host cuts a pool's subnet into small aligned blocks (a /26 for IPv4
// and a /122 for IPv6 by default) and claims a free block by a
// compare-and-swap transaction (the block's key must not exist) written
// under the host's etcd lease. It then hands out the addresses of its blocks
// from memory, without a request to etcd, claims another block when its
// blocks are full, and deletes a block's key as soon as the block is empty
// again. Since a block belongs to one host at a time and only that host
// allocates in it, two hosts never hand out one address, even when they
// allocate at the same instant. A host whose lease ends (it died, or lost
// etcd for longer than the lease's TTL) loses its blocks: etcd deletes their
// keys, other hosts may claim them, and the host's allocator refuses every
// later call with an error wrapping [etcdstore.ErrLeaseLost]; the host then
// starts again with a new lease and a new allocator.
//
// VXLAN IDs ([VXLANAllocator]) are allocated the same way, in blocks of 64
// IDs from 4096 up by default, except that an ID, which belongs to a network
// rather than to a host, is also recorded under a key of its own with no
// lease, created by compare-and-swap. The record decides: it outlives the
// host that chose the ID, a host that claims the block later skips it, any
// host may ask for a given ID or release one (a network is deleted
// anywhere), and the block only spares hosts from racing for the same IDs.
// Networks are made rarely, so the extra write costs nothing that matters.
//
// A network's gateway and auxiliary addresses belong to the network, not to
// a host: [Allocator.ReserveAddress] records each under a key of its own
// with no lease, right after the pool is requested, and every block skips
// the reserved addresses of its pool, whichever host claims it and
// whenever (it reads them when it claims the block). The reservations go
// with the pool.
//
// A controller that restarts within its lease's TTL takes the lease back
// ([etcdstore.Store.AdoptLease]) and makes new allocators with it and the
// same Host. A block record names the host and the lease it was claimed
// under, so the new allocators take the old run's blocks as their own
// (with nothing allocated) as soon as the controller asks again for the
// addresses its records hold; the rest of those blocks is free again. A
// block of the same host name under another lease is another host's.
//
// Keys (under the store's own prefix):
//
//	ipam/global/pools/<pool>                   a pool: its ID, subnet and block size
//	ipam/global/blocks/<pool>/<block>          a claimed block (leased): host, lease
//	ipam/global/reserved/<pool>/<ordinal>      a reserved address (no lease)
//	vxlan/blocks/<block>                       a claimed block of VXLAN IDs (leased)
//	vxlan/ids/<id>                             an allocated VXLAN ID (no lease)
//
// <pool> is the pool's key, made of its ID ("global/<subnet>#<nonce>", the
// nonce 16 hexadecimal digits): the subnet with '/' written as '_', then
// '_' and the nonce, so pool ID global/10.0.0.0/24#0123456789abcdef has key
// 10.0.0.0_24_0123456789abcdef. A pool's record is written only if its key
// does not exist, and is deleted in one transaction with the blocks and
// reservations under its key, which no other pool shares. Blocks are their
// index in 16 hexadecimal digits, and reserved addresses their offset in
// the subnet in 16 hexadecimal digits, so keys sort in address order.
package global
