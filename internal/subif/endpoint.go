package subif

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/osl"
)

// CreateEndpoint records the endpoint; its link is made at Join.
func (d *driver[M]) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	if req.MAC != nil {
		if err := linkrules.CheckMAC(req.MAC); err != nil {
			return fmt.Errorf("mac address %q: %w", req.MAC, err)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.endpoints[req.EndpointID]; ok {
		return fmt.Errorf("%w: endpoint %s on %s network %s", driverapi.ErrExists, req.EndpointID, d.kind.Type, req.NetworkID)
	}
	n.endpoints[req.EndpointID] = &endpoint{}
	return nil
}

// DeleteEndpoint forgets an endpoint that is not joined.
func (d *driver[M]) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	n, err := d.network(nid)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, err := d.endpointLocked(n, eid)
	if err != nil {
		return err
	}
	if ep.ifName != "" {
		return fmt.Errorf("%w: endpoint %s is joined (interface %s)", driverapi.ErrInUse, eid, ep.ifName)
	}
	delete(n.endpoints, eid)
	return nil
}

// endpointLocked returns endpoint eid of n, whose mu the caller holds.
func (d *driver[M]) endpointLocked(n *network[M], eid string) (*endpoint, error) {
	ep, ok := n.endpoints[eid]
	if !ok {
		return nil, fmt.Errorf("%w: endpoint %s on %s network %s", driverapi.ErrNotFound, eid, d.kind.Type, n.id)
	}
	return ep, nil
}

// claimLocked marks ep joining as ifName, after checking that it is not
// joined and that the parent of an exclusive network (passthru) is not
// taken.
func (d *driver[M]) claimLocked(n *network[M], ep *endpoint, eid, ifName string) error {
	if ep.ifName != "" {
		return fmt.Errorf("%w: endpoint %s is already joined (interface %s)", driverapi.ErrExists, eid, ep.ifName)
	}
	if mode := n.opts.Mode; mode.Exclusive {
		for id, other := range n.endpoints {
			if other.ifName != "" {
				return fmt.Errorf("%w: option %s=%s: parent %q already carries endpoint %s; %s takes one endpoint",
					driverapi.ErrInUse, d.kind.ModeOption, mode.Name, n.parent.Name, id, mode.Name)
			}
		}
	}
	ep.ifName = ifName
	return nil
}

// Join makes the endpoint's link in one request, directly inside the
// sandbox, named, and with the endpoint's MAC if the kind's links have one
// of their own (a macvlan link in passthru mode takes the parent's MAC
// instead: that is what passthru means). Unless the network is internal, it
// reports the physical network's router as the gateway or, in a routed mode,
// a default route through the interface.
func (d *driver[M]) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	if req.Sandbox == nil || req.InterfaceName == "" {
		return driverapi.JoinResponse{}, fmt.Errorf("%w: join endpoint %s: sandbox and interface name are required", driverapi.ErrInvalid, req.EndpointID)
	}
	n.mu.Lock()
	ep, err := d.endpointLocked(n, req.EndpointID)
	if err == nil {
		err = d.claimLocked(n, ep, req.EndpointID, req.InterfaceName)
	}
	n.mu.Unlock()
	if err != nil {
		return driverapi.JoinResponse{}, err
	}

	spec := LinkSpec[M]{
		Name: req.InterfaceName,
		NS:   req.Sandbox,
		Mode: n.opts.Mode.Value,
		MTU:  n.opts.MTU,
	}
	if d.kind.OwnMAC {
		spec.MAC = req.MAC
	}
	if err := d.addLink(ctx, n, spec); err != nil {
		n.mu.Lock()
		ep.ifName = ""
		n.mu.Unlock()
		switch {
		case errors.Is(err, syscall.EEXIST):
			return driverapi.JoinResponse{}, fmt.Errorf("%w: interface %s in sandbox %s: %w", driverapi.ErrExists, req.InterfaceName, req.Sandbox, err)
		case d.kind.KernelOptional && errors.Is(err, osl.ErrKindNotSupported):
			return driverapi.JoinResponse{}, fmt.Errorf("%w: %s network %s: the kernel has no %s: %w", driverapi.ErrNotSupported, d.kind.Type, n.id, d.kind.Type, err)
		case errors.Is(err, osl.ErrLinkNotFound), errors.Is(err, syscall.ENODEV):
			return driverapi.JoinResponse{}, fmt.Errorf("%w: parent %q of network %s does not exist (any more): %w", driverapi.ErrNotFound, n.parent.Name, n.id, err)
		}
		return driverapi.JoinResponse{}, err
	}
	n.mu.Lock()
	ep.sandbox = req.Sandbox
	n.mu.Unlock()
	return n.joinResponse(), nil
}

// joinResponse is what every Join of the network reports.
func (n *network[M]) joinResponse() driverapi.JoinResponse {
	resp := driverapi.JoinResponse{Gateway: n.gw4, GatewayIPv6: n.gw6}
	if n.internal || !n.opts.Mode.Routed {
		return resp
	}
	// Routed: the parent routes everything; the sandbox sends it all out of
	// the interface, with no next hop to resolve (Docker does the same).
	if n.v4 {
		resp.StaticRoutes = append(resp.StaticRoutes, driverapi.StaticRoute{Destination: netip.MustParsePrefix("0.0.0.0/0")})
	}
	if n.v6 {
		resp.StaticRoutes = append(resp.StaticRoutes, driverapi.StaticRoute{Destination: netip.MustParsePrefix("::/0")})
	}
	return resp
}

// Leave deletes the endpoint's link inside the sandbox, unless the sandbox's
// namespace is being destroyed, which takes the link with it.
func (d *driver[M]) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	ep, err := d.endpointLocked(n, req.EndpointID)
	var ifName string
	var sb *osl.Namespace
	if err == nil {
		ifName, sb = ep.ifName, ep.sandbox
	}
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if req.Sandbox != nil {
		sb = req.Sandbox
	}
	if req.InterfaceName != "" {
		ifName = req.InterfaceName // renamed when taken out of use
	}
	if ifName != "" && sb != nil && !req.SandboxGone {
		if err := sb.DeleteLink(ctx, ifName); err != nil {
			return err
		}
	}
	n.mu.Lock()
	ep.ifName, ep.sandbox = "", nil
	n.mu.Unlock()
	return nil
}

// addLink makes the endpoint's link on the network's parent, which it looks
// up by name: one more small request, so that a parent made again since the
// network was (a NIC reset, a reboot before a restore) is found under its
// new index.
func (d *driver[M]) addLink(ctx context.Context, n *network[M], spec LinkSpec[M]) error {
	p, err := d.cfg.HostNS.LinkByName(ctx, n.parent.Name)
	if err != nil {
		return err
	}
	spec.ParentIndex = p.Index
	return d.kind.AddLink(ctx, d.cfg.HostNS, spec)
}

// RestoreEndpoint takes an endpoint back after a restart; a joined one keeps
// its interface inside its sandbox, which Leave deletes as usual.
func (d *driver[M]) RestoreEndpoint(ctx context.Context, req driverapi.RestoreEndpointRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	ep := &endpoint{}
	if req.Sandbox != nil {
		ep.ifName, ep.sandbox = req.InterfaceName, req.Sandbox
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.endpoints[req.EndpointID] = ep
	return nil
}

// FinishRestore has nothing to sweep: the driver makes no host-side object
// per endpoint. A link that a crash left inside a surviving sandbox between
// Join and its record is in the sandbox's namespace, which only the
// controller knows.
func (d *driver[M]) FinishRestore(ctx context.Context) error { return nil }
