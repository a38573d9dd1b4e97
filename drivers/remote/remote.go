// Package remote is cnm's client of Docker's network plugin protocol: a
// [driverapi.Driver] whose every call goes to a plugin, a separate process
// speaking JSON over HTTP (see package plugin/protocol), such as Weave Net
// or anything built with Docker's go-plugins-helpers.
//
// What the plugin does and what cnm does are split as in Docker. The
// plugin makes the interface of an endpoint at Join, in the host namespace,
// and names it (InterfaceName.SrcName); cnm moves it into the sandbox,
// names it eth<N>, gives it the endpoint's addresses and brings it up, then
// installs the default route through the gateway the plugin names and the
// plugin's static routes. At Leave cnm moves the interface back to the host
// namespace under its original name, as Docker does, and the plugin
// removes it. Addresses always come from cnm's IPAM (which may itself be a
// plugin: package ipam/remote); a plugin may not choose other ones.
//
// Differences from Docker: the interface inside the sandbox is named eth<N>
// whatever InterfaceName.DstPrefix asks; DisableGatewayService is ignored
// (cnm has no gateway network). After a restart of the controller, networks
// and endpoints are taken back without calling the plugin (it keeps its own
// state, as with Docker), so a plugin that is down does not stop the
// controller; its networks work again when it returns.
//
// Every error of a plugin call is a [*plugin.CallError] naming the plugin and
// the call; answers that cnm cannot apply are refused with an error naming
// the field and the value, and the plugin's half-done work is undone
// (Leave after a refused Join, DeleteEndpoint after a refused
// CreateEndpoint).
package remote

import (
	"context"
	"fmt"
	"sync"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// Config configures a remote [Driver].
type Config struct {
	// Client calls the plugin; required. Its name is the driver's type.
	Client *plugin.Client
	// HostNS is the namespace the plugin makes its interfaces in (the
	// controller's host namespace); required.
	HostNS *osl.Namespace
}

// Driver is a network driver served by a plugin. It is safe for concurrent
// use. Besides [driverapi.Driver] it implements [driverapi.EndpointPreparer],
// [driverapi.ExternalConnector] and [driverapi.Restorer], and offers the
// protocol's calls that cnm's controller does not make itself
// (EndpointOperInfo, DiscoverNew, DiscoverDelete, AllocateNetwork,
// FreeNetwork).
type Driver struct {
	client *plugin.Client
	hostNS *osl.Namespace

	// mu guards the fields below.
	mu        sync.Mutex
	activated bool
	caps      driverapi.Capability
	endpoints map[epKey]*endpoint
}

type epKey struct{ nid, eid string }

// endpoint is what the driver remembers of a joined endpoint.
type endpoint struct {
	srcName string // the plugin's name of the interface, in the host namespace
	ifName  string // its name inside the sandbox
}

var (
	_ driverapi.Driver            = (*Driver)(nil)
	_ driverapi.EndpointPreparer  = (*Driver)(nil)
	_ driverapi.ExternalConnector = (*Driver)(nil)
	_ driverapi.Restorer          = (*Driver)(nil)
)

// New returns a driver for the plugin cfg.Client calls. It does not contact
// the plugin: [Driver.Activate] does, and every call activates first if
// needed. A missing client or namespace is an error wrapping
// errdefs.ErrInvalid.
func New(cfg Config) (*Driver, error) {
	if cfg.Client == nil || cfg.HostNS == nil {
		return nil, fmt.Errorf("%w: remote driver: a client and a host namespace are required", errdefs.ErrInvalid)
	}
	return &Driver{
		client:    cfg.Client,
		hostNS:    cfg.HostNS,
		caps:      driverapi.Capability{Scope: driverapi.LocalScope},
		endpoints: map[epKey]*endpoint{},
	}, nil
}

// Type returns the plugin's name.
func (d *Driver) Type() string { return d.client.Name() }

// Capability returns the scope the plugin reported at activation; before
// that, local. Endpoints of a plugin always have an interface, and the
// controller keeps a sandbox's namespace until Leave has moved it out.
func (d *Driver) Capability() driverapi.Capability {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.caps
}

// Activate performs the handshake (/Plugin.Activate, which must list
// NetworkDriver) and asks for the plugin's capabilities, once: after a
// success it returns at once. Safe to call concurrently.
func (d *Driver) Activate(ctx context.Context) error {
	d.mu.Lock()
	done := d.activated
	d.mu.Unlock()
	if done {
		return nil
	}
	if _, err := d.client.Activate(ctx, protocol.NetworkDriver); err != nil {
		return err
	}
	var resp protocol.CapabilitiesResponse
	if err := d.client.Call(ctx, protocol.PathGetCapabilities, nil, &resp); err != nil {
		return err
	}
	caps := driverapi.Capability{Scope: driverapi.LocalScope}
	switch resp.Scope {
	case "", protocol.LocalScope:
	case protocol.GlobalScope:
		caps.Scope = driverapi.GlobalScope
	default:
		return &plugin.CallError{Plugin: d.Type(), Call: "NetworkDriver.GetCapabilities",
			Err: fmt.Errorf("%w: Scope %q: want %q or %q", plugin.ErrProtocol, resp.Scope, protocol.LocalScope, protocol.GlobalScope)}
	}
	d.mu.Lock()
	d.activated, d.caps = true, caps
	d.mu.Unlock()
	return nil
}

// call activates the plugin if needed, then makes one call.
func (d *Driver) call(ctx context.Context, path string, req, resp any) error {
	if err := d.Activate(ctx); err != nil {
		return err
	}
	return d.client.Call(ctx, path, req, resp)
}

// refuse makes the error of an answer cnm cannot apply.
func (d *Driver) refuse(path string, err error) error {
	return &plugin.CallError{Plugin: d.Type(), Call: path[1:], Err: err}
}
