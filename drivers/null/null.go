// Package null is cnm's null driver: its endpoints give a sandbox no
// interface at all, so the sandbox has its loopback only (Docker's "none"
// network).
package null

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/seed53641549/cnm/driverapi"
)

// NetworkType is the driver's name.
const NetworkType = "null"

// Register makes a null driver and registers it under [NetworkType].
func Register(r driverapi.Registerer) error {
	return r.RegisterDriver(NetworkType, New())
}

// New returns a null driver.
func New() driverapi.Driver { return NewNoInterface(NetworkType) }

// Driver is a driver whose endpoints have no interface: the null driver,
// and the host driver built on it. It makes no kernel object and keeps no
// state: the controller keeps the networks and endpoints.
type Driver struct {
	kind string
}

var _ driverapi.Driver = (*Driver)(nil)

// NewNoInterface returns a driver of the given type whose endpoints have no
// interface.
func NewNoInterface(kind string) *Driver { return &Driver{kind: kind} }

// Type returns the driver's name.
func (d *Driver) Type() string { return d.kind }

// Capability says the driver is local and its endpoints have no interface.
func (d *Driver) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.LocalScope, NoInterface: true}
}

// CreateNetwork checks the request: the driver takes no driver options and
// no addressing. It makes nothing, so it also serves restores.
func (d *Driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	if len(req.Options) > 0 {
		keys := slices.Sorted(maps.Keys(req.Options))
		return fmt.Errorf("%w: unknown %s driver option %q: the driver takes none", driverapi.ErrInvalid, d.kind, keys[0])
	}
	if req.IPv4 != nil || req.IPv6 != nil {
		return fmt.Errorf("%w: %s networks take no addressing", driverapi.ErrInvalid, d.kind)
	}
	return nil
}

// DeleteNetwork has nothing to delete.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error { return nil }

// Join has nothing to make.
func (d *Driver) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	return driverapi.JoinResponse{}, nil
}

// Leave has nothing to remove.
func (d *Driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error { return nil }
