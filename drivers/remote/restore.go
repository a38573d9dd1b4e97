package remote

import (
	"context"

	"github.com/seed53641549/cnm/driverapi"
)

// RestoreNetwork takes a network back after the controller restarted. It
// does not call the plugin: as with Docker, a plugin keeps its own state
// across the daemon's restarts, and one that is down must not stop the
// controller from starting. The network works again once the plugin
// answers.
func (d *Driver) RestoreNetwork(ctx context.Context, req driverapi.NetworkRequest) error { return nil }

// RestoreEndpoint remembers a joined endpoint's interface, so a later Leave
// takes it out of the sandbox. The plugin's name for it is not known any
// more: Leave deletes it instead of moving it back.
func (d *Driver) RestoreEndpoint(ctx context.Context, req driverapi.RestoreEndpointRequest) error {
	if req.Sandbox == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.endpoints[epKey{req.NetworkID, req.EndpointID}] = &endpoint{ifName: req.InterfaceName}
	return nil
}

// FinishRestore has nothing to sweep: the plugin owns its objects.
func (d *Driver) FinishRestore(ctx context.Context) error { return nil }
