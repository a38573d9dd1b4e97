// Package null is cnm's null driver: its endpoints give a sandbox no
// interface at all, so the sandbox has its loopback only (Docker's "none"
// network).
package null

import (
	"context"
	"fmt"
	"sort"
	"sync"

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

// Driver keeps the bookkeeping shared by drivers whose endpoints have no
// interface: the null driver, and the host driver built on it. It makes no
// kernel object.
type Driver struct {
	kind string

	// mu guards networks.
	mu       sync.Mutex
	networks map[string]map[string]bool // network ID -> endpoint ID -> joined
}

var _ driverapi.Driver = (*Driver)(nil)

// NewNoInterface returns the bookkeeping for a driver of the given type.
func NewNoInterface(kind string) *Driver {
	return &Driver{kind: kind, networks: map[string]map[string]bool{}}
}

// Type returns the driver's name.
func (d *Driver) Type() string { return d.kind }

// Capability says the driver is local and its endpoints have no interface.
func (d *Driver) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.LocalScope, NoInterface: true}
}

// CreateNetwork records the network. It takes no driver options and no
// addressing.
func (d *Driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	if len(req.Options) > 0 {
		keys := make([]string, 0, len(req.Options))
		for k := range req.Options {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return fmt.Errorf("%w: unknown %s driver option %q: the driver takes none", driverapi.ErrInvalid, d.kind, keys[0])
	}
	if req.IPv4 != nil || req.IPv6 != nil {
		return fmt.Errorf("%w: %s networks take no addressing", driverapi.ErrInvalid, d.kind)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[req.ID]; ok {
		return fmt.Errorf("%w: %s network %s", driverapi.ErrExists, d.kind, req.ID)
	}
	d.networks[req.ID] = map[string]bool{}
	return nil
}

// DeleteNetwork forgets a network without endpoints.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps, ok := d.networks[id]
	if !ok {
		return fmt.Errorf("%w: %s network %s", driverapi.ErrNotFound, d.kind, id)
	}
	if len(eps) > 0 {
		return fmt.Errorf("%w: %s network %s has %d endpoints", driverapi.ErrInUse, d.kind, id, len(eps))
	}
	delete(d.networks, id)
	return nil
}

// CreateEndpoint records the endpoint.
func (d *Driver) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps, ok := d.networks[req.NetworkID]
	if !ok {
		return fmt.Errorf("%w: %s network %s", driverapi.ErrNotFound, d.kind, req.NetworkID)
	}
	if _, ok := eps[req.EndpointID]; ok {
		return fmt.Errorf("%w: endpoint %s", driverapi.ErrExists, req.EndpointID)
	}
	eps[req.EndpointID] = false
	return nil
}

// DeleteEndpoint forgets an endpoint that is not joined.
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	return d.update(nid, eid, func(eps map[string]bool) error {
		if eps[eid] {
			return fmt.Errorf("%w: endpoint %s is joined", driverapi.ErrInUse, eid)
		}
		delete(eps, eid)
		return nil
	})
}

// Join records the endpoint as joined; there is nothing to make.
func (d *Driver) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	return driverapi.JoinResponse{}, d.update(req.NetworkID, req.EndpointID, func(eps map[string]bool) error {
		if eps[req.EndpointID] {
			return fmt.Errorf("%w: endpoint %s is already joined", driverapi.ErrExists, req.EndpointID)
		}
		eps[req.EndpointID] = true
		return nil
	})
}

// Leave records the endpoint as no longer joined.
func (d *Driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	return d.update(req.NetworkID, req.EndpointID, func(eps map[string]bool) error {
		eps[req.EndpointID] = false
		return nil
	})
}

func (d *Driver) update(nid, eid string, fn func(map[string]bool) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps, ok := d.networks[nid]
	if !ok {
		return fmt.Errorf("%w: %s network %s", driverapi.ErrNotFound, d.kind, nid)
	}
	if _, ok := eps[eid]; !ok {
		return fmt.Errorf("%w: endpoint %s on %s network %s", driverapi.ErrNotFound, eid, d.kind, nid)
	}
	return fn(eps)
}

var _ driverapi.Restorer = (*Driver)(nil)

// RestoreNetwork records the network again after a restart.
func (d *Driver) RestoreNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[req.ID]; !ok {
		d.networks[req.ID] = map[string]bool{}
	}
	return nil
}

// RestoreEndpoint records the endpoint again after a restart.
func (d *Driver) RestoreEndpoint(ctx context.Context, req driverapi.RestoreEndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps, ok := d.networks[req.NetworkID]
	if !ok {
		return fmt.Errorf("%w: %s network %s", driverapi.ErrNotFound, d.kind, req.NetworkID)
	}
	eps[req.EndpointID] = req.Sandbox != nil
	return nil
}

// FinishRestore has nothing to clean: the driver makes no kernel object.
func (d *Driver) FinishRestore(ctx context.Context) error { return nil }
