package cnm

import (
	"context"
	"errors"
	"net/netip"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/ipam/global"
)

// globalIPAMDriver names the global allocator in network records.
const globalIPAMDriver = "global"

// globalIPAM is the address allocator of global networks: this host's
// [global.Allocator], behind one pointer that a new lease replaces (the
// networks keep this one).
type globalIPAM struct {
	mu sync.RWMutex
	a  *global.Allocator
}

var _ ipam.Allocator = (*globalIPAM)(nil)

func (x *globalIPAM) cur() *global.Allocator {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.a
}

// swap puts a in place and closes the allocator it replaces.
func (x *globalIPAM) swap(a *global.Allocator) {
	x.mu.Lock()
	old := x.a
	x.a = a
	x.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

func (x *globalIPAM) close() {
	if a := x.cur(); a != nil {
		a.Close()
	}
}

// AddressSpaces returns the local and global address spaces' names.
func (x *globalIPAM) AddressSpaces() (string, string) { return ipam.LocalSpace, ipam.GlobalSpace }

// RequestPool reserves a subnet for every host.
func (x *globalIPAM) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	req.AddressSpace = ipam.GlobalSpace
	return x.cur().RequestPool(ctx, req)
}

// ReleasePool drops a pool for every host.
func (x *globalIPAM) ReleasePool(ctx context.Context, id string) error {
	return x.cur().ReleasePool(ctx, id)
}

// RequestAddress allocates an address in this host's blocks.
func (x *globalIPAM) RequestAddress(ctx context.Context, id string, req ipam.AddressRequest) (netip.Addr, error) {
	return x.cur().RequestAddress(ctx, id, req)
}

// ReleaseAddress frees an address of this host's blocks. A pool that is
// gone (another host deleted the network, and its pool with it) has
// nothing left to free: no error.
func (x *globalIPAM) ReleaseAddress(ctx context.Context, id string, a netip.Addr) error {
	if err := x.cur().ReleaseAddress(ctx, id, a); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	return nil
}

// ReserveAddress reserves a gateway or aux address for every host, for
// good (until the pool goes).
func (x *globalIPAM) ReserveAddress(ctx context.Context, id string, a netip.Addr) error {
	return x.cur().ReserveAddress(ctx, id, a)
}

// addressReserver is an allocator whose gateway and aux addresses are
// reserved for every host rather than allocated by one.
type addressReserver interface {
	ReserveAddress(ctx context.Context, poolID string, addr netip.Addr) error
}
