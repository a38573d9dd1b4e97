package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
	"golang.org/x/sys/unix"
)

// CreateEndpoint records the endpoint; its interface is made at Join.
func (d *driver) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	if req.MAC != nil && (len(req.MAC) != 6 || req.MAC[0]&1 == 1) {
		return fmt.Errorf("%w: mac address %s: not a unicast Ethernet address", driverapi.ErrInvalid, req.MAC)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.endpoints[req.EndpointID]; ok {
		return fmt.Errorf("%w: endpoint %s on bridge network %s", driverapi.ErrExists, req.EndpointID, req.NetworkID)
	}
	n.endpoints[req.EndpointID] = &endpoint{}
	return nil
}

// DeleteEndpoint forgets an endpoint that is not joined.
func (d *driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	n, err := d.network(nid)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, ok := n.endpoints[eid]
	if !ok {
		return fmt.Errorf("%w: endpoint %s on bridge network %s", driverapi.ErrNotFound, eid, nid)
	}
	if ep.hostIf != "" {
		return fmt.Errorf("%w: endpoint %s is joined (veth %s)", driverapi.ErrInUse, eid, ep.hostIf)
	}
	delete(n.endpoints, eid)
	return nil
}

func (n *network) endpoint(eid string) (*endpoint, error) {
	ep, ok := n.endpoints[eid]
	if !ok {
		return nil, fmt.Errorf("%w: endpoint %s on bridge network %s", driverapi.ErrNotFound, eid, n.id)
	}
	return ep, nil
}

// Join makes the endpoint's veth pair in one request: the host end on the
// bridge and up, the peer inside the sandbox, named and with its MAC.
func (d *driver) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	n.mu.Lock()
	ep, err := n.endpoint(req.EndpointID)
	if err == nil && ep.hostIf != "" {
		err = fmt.Errorf("%w: endpoint %s is already joined (veth %s)", driverapi.ErrExists, req.EndpointID, ep.hostIf)
	}
	n.mu.Unlock()
	if err != nil {
		return driverapi.JoinResponse{}, err
	}

	hostIf := hostIfName()
	err = d.cfg.HostNS.AddVeth(ctx, osl.VethSpec{
		HostName:    hostIf,
		PeerName:    req.InterfaceName,
		PeerNS:      req.Sandbox,
		MasterIndex: n.bridge,
		MTU:         n.opts.mtu,
		PeerMAC:     req.MAC,
	})
	if errors.Is(err, unix.EEXIST) {
		return driverapi.JoinResponse{}, fmt.Errorf("%w: interface %s or %s: %w", driverapi.ErrExists, req.InterfaceName, hostIf, err)
	}
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	if !n.opts.icc {
		// No inter-container traffic: isolated ports reach the bridge (the
		// gateway) but never each other, without any netfilter help.
		if err := d.cfg.HostNS.SetBridgePortIsolated(ctx, hostIf, true); err != nil {
			_ = d.cfg.HostNS.DeleteLink(context.WithoutCancel(ctx), hostIf)
			return driverapi.JoinResponse{}, err
		}
	}
	n.mu.Lock()
	ep.hostIf = hostIf
	n.mu.Unlock()

	var resp driverapi.JoinResponse
	if !n.internal {
		resp.Gateway, resp.GatewayIPv6 = n.gw4, n.gw6
	}
	return resp, nil
}

// Leave deletes the endpoint's veth pair (both ends go with the host end),
// unless the sandbox's namespace is being destroyed, which takes the pair
// with it.
func (d *driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	ep, err := n.endpoint(req.EndpointID)
	var hostIf string
	if err == nil {
		hostIf = ep.hostIf
	}
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if hostIf != "" && !req.SandboxGone {
		if err := d.cfg.HostNS.DeleteLink(ctx, hostIf); err != nil {
			return err
		}
	}
	n.mu.Lock()
	ep.hostIf = ""
	n.mu.Unlock()
	return nil
}
