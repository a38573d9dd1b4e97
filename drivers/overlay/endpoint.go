package overlay

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/osl"
)

// CreateEndpoint records the endpoint; its interface is made at Join.
func (d *Driver) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	if req.MAC != nil {
		if err := linkrules.CheckMAC(req.MAC); err != nil {
			return fmt.Errorf("overlay endpoint %s: MAC %q: %w", req.EndpointID, req.MAC, err)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.endpoints[req.EndpointID]; ok {
		return fmt.Errorf("%w: endpoint %s on overlay network %s", driverapi.ErrExists, req.EndpointID, n.id)
	}
	n.endpoints[req.EndpointID] = &endpoint{}
	return nil
}

// DeleteEndpoint forgets an endpoint that is not joined.
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	n, err := d.network(nid)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, err := n.endpoint(eid)
	if err != nil {
		return err
	}
	if ep.hostIf != "" {
		return fmt.Errorf("%w: endpoint %s is joined (veth %s)", driverapi.ErrInUse, eid, ep.hostIf)
	}
	delete(n.endpoints, eid)
	return nil
}

// endpoint returns the endpoint eid; the caller holds n.mu.
func (n *network) endpoint(eid string) (*endpoint, error) {
	ep, ok := n.endpoints[eid]
	if !ok {
		return nil, fmt.Errorf("%w: endpoint %q on overlay network %s", driverapi.ErrNotFound, eid, n.id)
	}
	return ep, nil
}

// Join makes the network's namespace if this is its first endpoint on this
// host, then the endpoint's veth pair in one request: one end a port of
// br0 and up, the other inside the sandbox, named and with its MAC, with the
// network's MTU. It reports no gateway: egress to the outside world is not
// the overlay's (a gateway bridge network's, later).
func (d *Driver) Join(ctx context.Context, req driverapi.JoinRequest) (resp driverapi.JoinResponse, retErr error) {
	if req.Sandbox == nil {
		return resp, fmt.Errorf("%w: overlay join of endpoint %s: no sandbox", driverapi.ErrInvalid, req.EndpointID)
	}
	if err := linkrules.CheckIfName(req.InterfaceName); err != nil {
		return resp, fmt.Errorf("overlay join: interface name %q: %w", req.InterfaceName, err)
	}
	if req.MAC != nil {
		if err := linkrules.CheckMAC(req.MAC); err != nil {
			return resp, fmt.Errorf("overlay join: MAC %q: %w", req.MAC, err)
		}
	}
	n, err := d.network(req.NetworkID)
	if err != nil {
		return resp, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, err := n.endpoint(req.EndpointID)
	if err != nil {
		return resp, err
	}
	if ep.hostIf != "" {
		return resp, fmt.Errorf("%w: endpoint %s is already joined (veth %s)", driverapi.ErrExists, req.EndpointID, ep.hostIf)
	}
	if n.idle != nil { // the namespace is taken again before it is dropped
		n.idle.Stop()
		n.idle = nil
	}
	if n.sb == nil {
		if err := d.makeSandbox(ctx, n); err != nil {
			return resp, err
		}
		defer func() {
			if retErr != nil && n.joined == 0 {
				retErr = errors.Join(retErr, d.dropSandbox(context.WithoutCancel(ctx), n))
			}
		}()
	}
	if err := d.step("veth"); err != nil {
		return resp, err
	}
	port := linkrules.VethName()
	err = n.sb.ns.AddVeth(ctx, osl.VethSpec{
		HostName:    port,
		PeerName:    req.InterfaceName,
		PeerNS:      req.Sandbox,
		MasterIndex: n.sb.bridge,
		MTU:         n.mtu,
		PeerMAC:     req.MAC,
	})
	if errors.Is(err, syscall.EEXIST) {
		return resp, fmt.Errorf("%w: overlay join: interface %s in sandbox %s: %w", driverapi.ErrExists, req.InterfaceName, req.Sandbox, err)
	}
	if err != nil {
		return resp, fmt.Errorf("overlay join of endpoint %s: %w", req.EndpointID, err)
	}
	ep.hostIf = port
	n.joined++
	return resp, nil
}

// Leave deletes the endpoint's veth pair (both ends go with the one on
// br0), and drops the network's namespace when it was the last endpoint
// joined on this host. Leaving an endpoint that is not joined does nothing.
func (d *Driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, err := n.endpoint(req.EndpointID)
	if err != nil {
		return err
	}
	if ep.hostIf == "" {
		return nil
	}
	// Deleted here, not left to the namespace's destruction, which the
	// kernel runs later: Leave returns once the interface is gone. A veth
	// takes the kernel tens of milliseconds to delete: unless this is the
	// last endpoint (whose leave drops the namespace), the deletion runs
	// without n.mu, so that other endpoints of the network are made and
	// joined meanwhile. The namespace stays: ep still counts as joined.
	// A Leave of ep that ran meanwhile (a retry) has counted it out.
	sb := n.sb
	if n.joined > 1 {
		hostIf := ep.hostIf
		n.mu.Unlock()
		err = sb.ns.DeleteLink(ctx, hostIf)
		n.mu.Lock()
		if ep.hostIf == "" {
			return nil
		}
	} else {
		err = sb.ns.DeleteLink(ctx, ep.hostIf)
	}
	if err != nil {
		return fmt.Errorf("overlay leave of endpoint %s: %w", req.EndpointID, err)
	}
	ep.hostIf = ""
	n.joined--
	if n.joined == 0 {
		if d.cfg.IdleTimeout > 0 {
			var t *time.Timer
			t = time.AfterFunc(d.cfg.IdleTimeout, func() { d.dropIdle(n, t) })
			n.idle = t
			return nil
		}
		return d.dropSandbox(ctx, n)
	}
	return nil
}

// dropIdle drops network n's namespace when its idle timer t fires, unless
// a join took the namespace meanwhile.
func (d *Driver) dropIdle(n *network, t *time.Timer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.idle != t || n.joined > 0 {
		return
	}
	n.idle = nil
	// A failure leaves the namespace: DeleteNetwork, or the next
	// FinishRestore, drops it.
	_ = d.dropSandbox(context.Background(), n)
}
