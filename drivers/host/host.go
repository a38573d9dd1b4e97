// Package host is cnm's host driver: an endpoint on a host network lets its
// sandbox share the controller's host namespace (Docker's "host" network).
// The driver makes no kernel object; it only checks that the sandbox it joins
// really is the host namespace.
package host

import (
	"context"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/null"
	"github.com/seed53641549/cnm/osl"
)

// NetworkType is the driver's name.
const NetworkType = "host"

// Register makes a host driver for the namespace hostNS and registers it
// under [NetworkType].
func Register(r driverapi.Registerer, hostNS *osl.Namespace) error {
	if hostNS == nil {
		return fmt.Errorf("%w: host driver: host namespace is required", driverapi.ErrInvalid)
	}
	return r.RegisterDriver(NetworkType, &driver{Driver: null.NewNoInterface(NetworkType), hostNS: hostNS})
}

type driver struct {
	*null.Driver
	hostNS *osl.Namespace
}

var _ driverapi.Driver = (*driver)(nil)

// Join accepts only a sandbox whose namespace is the host namespace.
func (d *driver) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	want, err := d.hostNS.Inode()
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	got, err := req.Sandbox.Inode()
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	if got != want {
		return driverapi.JoinResponse{}, fmt.Errorf("%w: sandbox namespace %s is not the host namespace %s: create the sandbox with cnm.WithHostNetwork()",
			driverapi.ErrInvalid, req.Sandbox.Path(), d.hostNS.Path())
	}
	return d.Driver.Join(ctx, req)
}
