// Package ipam manages the addresses of container networks: it hands out
// address pools (subnets) to networks and addresses from those pools to
// endpoints.
//
// The controller talks to an address manager only through [Allocator], and
// finds it by name in a [Registry]: "default" is the [LocalAllocator], "null"
// the [NullAllocator] (no addresses at all), and remote or store-backed
// allocators for the global address space can be added later. [New] returns
// the default allocator, which keeps its state in memory and serves only the
// local address space ([LocalSpace]); [Open] returns one that writes its state
// through to a [Store] as small per-pool and per-range records and reads it
// back on start. [LocalAllocator.Snapshot] and [LocalAllocator.Restore] save
// and restore the whole state exactly.
//
// Allocated addresses are kept as runs of consecutive addresses in a B-tree,
// so memory follows what is allocated (a thousand consecutive addresses cost
// as much as one; a lone address at most a few dozen bytes), never the size
// of the pool, and a request or release takes O(log n) in the number of runs
// whatever the pool's size and fill. A pool request without a subnet takes
// the first free subnet of the default pools that overlaps neither a held
// pool nor a prefix the caller asks to avoid ([PoolRequest.Avoid]: the host's
// routes, addresses and nameservers), optionally of a given size
// ([PoolRequest.Size]).
//
// Addresses and subnets are [netip.Addr] and [netip.Prefix] values throughout.
// Errors wrap the sentinels of package errdefs (ErrInvalid, ErrNotFound,
// ErrExists) or this package's [ErrPoolExhausted] and [ErrOverlap], so callers
// test them with [errors.Is]; each message names the field and the value.
//
// Rules for usable addresses, common to every allocator:
//
//   - IPv4: the network address (host part all zeros) and the broadcast
//     address (host part all ones) are never handed out, except in a /31, where
//     both addresses are usable (RFC 3021), and in a /32, whose single address
//     is usable.
//   - IPv6: the first address of the subnet (host part all zeros, the
//     Subnet-Router anycast address of RFC 4291 section 2.6.1) is never handed
//     out, except in a /127 (RFC 6164) and a /128, by analogy with IPv4 /31
//     and /32. IPv6 has no broadcast address.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/errdefs"
)

// Names of the two address spaces. Pools in one address space never overlap;
// pools in different address spaces may.
const (
	// LocalSpace is the address space of networks that live on one host.
	LocalSpace = "local"
	// GlobalSpace is the address space of networks that span several hosts
	// (overlay). It needs a store shared by the hosts, so the default
	// allocator does not serve it.
	GlobalSpace = "global"
)

var (
	// ErrPoolExhausted reports that a pool has no free address left, or that
	// no default pool of the requested family is free (or configured). The
	// wrapping message names the pool or the family.
	ErrPoolExhausted = errors.New("pool exhausted")

	// ErrOverlap reports that a requested subnet overlaps a pool already held
	// in the same address space. It wraps [errdefs.ErrExists], so
	// errors.Is(err, errdefs.ErrExists) also holds. The wrapping message names
	// both subnets.
	ErrOverlap = fmt.Errorf("%w: overlapping subnet", errdefs.ErrExists)
)

// Allocator hands out address pools and the addresses inside them. The
// controller uses it for every network and endpoint; [LocalAllocator] is the
// default implementation, and a store-backed allocator for [GlobalSpace] will
// be another.
//
// Implementations are safe for concurrent use. A call that returns an error
// changes no state.
type Allocator interface {
	// AddressSpaces returns the names of the local and global address spaces.
	AddressSpaces() (local, global string)

	// RequestPool reserves a subnet as a new pool and returns it. See
	// [PoolRequest] for the defaults and the rules on its fields.
	RequestPool(ctx context.Context, req PoolRequest) (Pool, error)

	// ReleasePool drops the pool with the given ID, together with any address
	// still allocated in it. An unknown ID is reported with errdefs.ErrNotFound.
	ReleasePool(ctx context.Context, poolID string) error

	// RequestAddress allocates one address in the pool with the given ID. See
	// [AddressRequest] for the rules.
	RequestAddress(ctx context.Context, poolID string, req AddressRequest) (netip.Addr, error)

	// ReleaseAddress frees an address allocated in the pool with the given ID.
	// An address that is not allocated there, or an unknown pool ID, is
	// reported with errdefs.ErrNotFound.
	ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error
}

// StateKeeper is an optional interface of an Allocator that keeps its own
// pools and addresses across a restart of the controller (a plugin, which
// is a process of its own). A restarting controller does not ask it again
// for what its records say it holds, so a plugin that is down then does
// not keep the controller from starting; the pool IDs it recorded are used
// as they are.
type StateKeeper interface {
	KeepsState() bool
}

// KeepsState reports whether a keeps its own state across a restart of
// the controller ([StateKeeper]).
func KeepsState(a Allocator) bool {
	k, ok := a.(StateKeeper)
	return ok && k.KeepsState()
}

// PoolRequest describes the pool a network asks for in [Allocator.RequestPool].
type PoolRequest struct {
	// AddressSpace is the address space to take the pool from. Empty means
	// [LocalSpace]. The default allocator serves only LocalSpace and rejects
	// any other name with errdefs.ErrInvalid.
	AddressSpace string

	// Subnet is the subnet to reserve. It must be a valid, masked prefix
	// (no host bits set) that overlaps no pool held in the address space,
	// otherwise the request fails with errdefs.ErrInvalid or [ErrOverlap].
	// The zero value takes the first free subnet of the requested family
	// (see V6) from the allocator's default pools, or fails with
	// [ErrPoolExhausted] when none is free.
	Subnet netip.Prefix

	// IPRange optionally restricts dynamic allocation (a zero
	// [AddressRequest.Preferred]) to this sub-range of Subnet. When set, it
	// must be masked, of the same family as Subnet, inside Subnet, and hold
	// at least one usable address; it needs an explicit Subnet. The zero
	// value means the whole Subnet.
	IPRange netip.Prefix

	// V6 selects the family: IPv6 when true, IPv4 when false. When Subnet is
	// set it must agree with Subnet's family, otherwise the request fails
	// with errdefs.ErrInvalid.
	V6 bool

	// Size asks for "any subnet of this prefix length" when Subnet is zero:
	// the first free /Size cut from the bases of the default pools of the
	// family, in their order, whatever their own Size; bases shorter than
	// /Size are skipped. It must lie in 0..32 (IPv4) or 0..128 (IPv6) and
	// must be zero when Subnet is set, otherwise the request fails with
	// errdefs.ErrInvalid. Zero takes each default pool's own Size. When no
	// base can hold a /Size the request fails with [ErrPoolExhausted].
	Size int

	// Avoid lists prefixes that a subnet taken from the default pools must
	// not overlap, beside the pools already held: typically the host's own
	// addresses and routes and its resolv.conf nameservers (as /32 or
	// /128), so that container subnets never collide with the LAN or a VPN.
	// Host bits are ignored (an interface address with its prefix length
	// avoids its whole subnet), and entries of the other family are ignored,
	// so one list serves both families. Each entry must be a valid prefix,
	// otherwise the request fails with errdefs.ErrInvalid. A /0 avoids
	// everything of its family, so callers leave default routes out.
	// Avoid does not apply to an explicit Subnet: that is the caller's
	// choice. Nil avoids nothing.
	Avoid []netip.Prefix
}

// Pool is a subnet reserved in an address space, as returned by
// [Allocator.RequestPool].
type Pool struct {
	// ID identifies the pool in later calls. It is opaque, and unique among
	// the live pools of one allocator; the default allocator never reuses an
	// ID, so a stale ID of a released pool is reported as not found even when
	// the same subnet was reserved again.
	ID string
	// Subnet is the reserved subnet.
	Subnet netip.Prefix
	// IPRange is the sub-range dynamic addresses come from, or the zero value
	// when they come from the whole Subnet.
	IPRange netip.Prefix
}

// AddressRequest describes the address an endpoint (or a gateway) asks for in
// [Allocator.RequestAddress].
type AddressRequest struct {
	// Preferred is the exact address to allocate. It must lie in the pool's
	// Subnet (it may lie outside the IPRange: gateways and auxiliary
	// addresses do), must not be a reserved address of the subnet (network,
	// broadcast or IPv6 Subnet-Router anycast), and must be free; otherwise
	// the request fails with errdefs.ErrInvalid or errdefs.ErrExists. An
	// allocation of a preferred address does not move the next-fit cursor.
	//
	// The zero value allocates the next free usable address of the range
	// (IPRange, or Subnet when no range is set), next-fit: the search starts
	// after the address handed out last by a dynamic request in this pool and
	// wraps around, so that a just-released address is not reused at once.
	// When no usable address is free the request fails with
	// [ErrPoolExhausted].
	Preferred netip.Addr
}
