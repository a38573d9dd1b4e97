package ipam

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/errdefs"
)

// Pool IDs of the [NullAllocator], one per family.
const (
	NullPoolV4 = "null/0.0.0.0/0"
	NullPoolV6 = "null/::/0"
)

// NullAllocator is the "null" IPAM driver, for networks that want no
// addressing (Docker's null IPAM): it holds no state and hands out no
// address.
//
//   - RequestPool, with no Subnet, IPRange or Size, returns the pool
//     [NullPoolV4] with Subnet 0.0.0.0/0 ([NullPoolV6] with ::/0 when V6 is
//     set), as Docker's null driver does; every network gets the same one,
//     and it overlaps nothing. Any of those fields set is errdefs.ErrInvalid,
//     as is an address space other than [LocalSpace] or [GlobalSpace].
//   - RequestAddress in a null pool with no preferred address returns the
//     zero [netip.Addr] and no error: "no address". A caller tests
//     IsValid and then gives the endpoint no address of the family. A
//     preferred address (a gateway, an aux address, an endpoint's static
//     address) is refused with errdefs.ErrNotSupported, so that a request
//     for an address is never silently ignored.
//   - ReleasePool of a null pool and ReleaseAddress of the zero address in a
//     null pool succeed and do nothing. Any other pool ID is
//     errdefs.ErrNotFound; releasing a valid address is errdefs.ErrNotFound
//     too, since none was ever allocated.
//
// The zero value is ready to use and safe for concurrent use.
type NullAllocator struct{}

var _ Allocator = NullAllocator{}

// AddressSpaces returns [LocalSpace] and [GlobalSpace].
func (NullAllocator) AddressSpaces() (local, global string) { return LocalSpace, GlobalSpace }

// RequestPool returns the null pool of the family. See [NullAllocator].
func (NullAllocator) RequestPool(ctx context.Context, req PoolRequest) (Pool, error) {
	if err := ctx.Err(); err != nil {
		return Pool{}, err
	}
	switch req.AddressSpace {
	case "", LocalSpace, GlobalSpace:
	default:
		return Pool{}, fmt.Errorf("%w: address space %q is unknown", errdefs.ErrInvalid, req.AddressSpace)
	}
	switch {
	case req.Subnet.IsValid():
		return Pool{}, fmt.Errorf("%w: subnet %s: the null ipam driver hands out no address", errdefs.ErrInvalid, req.Subnet)
	case req.IPRange.IsValid():
		return Pool{}, fmt.Errorf("%w: ip-range %s: the null ipam driver hands out no address", errdefs.ErrInvalid, req.IPRange)
	case req.Size != 0:
		return Pool{}, fmt.Errorf("%w: size %d: the null ipam driver hands out no address", errdefs.ErrInvalid, req.Size)
	}
	if req.V6 {
		return Pool{ID: NullPoolV6, Subnet: netip.PrefixFrom(netip.IPv6Unspecified(), 0)}, nil
	}
	return Pool{ID: NullPoolV4, Subnet: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}, nil
}

// ReleasePool accepts the null pools only, and does nothing.
func (NullAllocator) ReleasePool(ctx context.Context, poolID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkNullPool(poolID)
}

// RequestAddress returns the zero address (no address) for a dynamic request
// and refuses a preferred one. See [NullAllocator].
func (NullAllocator) RequestAddress(ctx context.Context, poolID string, req AddressRequest) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, err
	}
	if err := checkNullPool(poolID); err != nil {
		return netip.Addr{}, err
	}
	if req.Preferred.IsValid() {
		return netip.Addr{}, fmt.Errorf("%w: address %s: the null ipam driver hands out no address", errdefs.ErrNotSupported, req.Preferred)
	}
	return netip.Addr{}, nil
}

// ReleaseAddress accepts the zero address in a null pool, and does nothing.
func (NullAllocator) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkNullPool(poolID); err != nil {
		return err
	}
	if addr.IsValid() {
		return fmt.Errorf("%w: address %s is not allocated in pool %q: the null ipam driver hands out no address", errdefs.ErrNotFound, addr, poolID)
	}
	return nil
}

func checkNullPool(id string) error {
	if id != NullPoolV4 && id != NullPoolV6 {
		return fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, id)
	}
	return nil
}
