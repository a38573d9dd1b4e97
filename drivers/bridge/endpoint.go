package bridge

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
func (d *driver) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
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
	d.healMu.RLock()
	defer d.healMu.RUnlock()
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

	hostIf := linkrules.VethName()
	err = d.cfg.HostNS.AddVeth(ctx, osl.VethSpec{
		HostName:    hostIf,
		PeerName:    req.InterfaceName,
		PeerNS:      req.Sandbox,
		MasterIndex: n.bridgeIndex(),
		MTU:         n.opts.mtu,
		PeerMAC:     req.MAC,
	})
	if errors.Is(err, syscall.EEXIST) {
		return driverapi.JoinResponse{}, fmt.Errorf("%w: interface %s or %s: %w", driverapi.ErrExists, req.InterfaceName, hostIf, err)
	}
	if err != nil {
		return driverapi.JoinResponse{}, err
	}
	if err := d.configurePort(ctx, n, hostIf); err != nil {
		_ = d.cfg.HostNS.DeleteLink(context.WithoutCancel(ctx), hostIf)
		return driverapi.JoinResponse{}, err
	}
	n.mu.Lock()
	ep.hostIf, ep.hostIndex = hostIf, 0 // the name is fresh: it is enough
	n.mu.Unlock()

	var resp driverapi.JoinResponse
	if !n.internal {
		resp.Gateway, resp.GatewayIPv6 = n.gw4, n.gw6
	}
	return resp, nil
}

// configurePort applies the network's port settings to a port of its
// bridge: at Join, and when a restore plugs a surviving port back into a
// bridge made again. (The MTU travels with the veth's creation.)
func (d *driver) configurePort(ctx context.Context, n *network, hostIf string) error {
	if !n.opts.icc {
		// No inter-container traffic: isolated ports reach the bridge (the
		// gateway) but never each other, without any netfilter help.
		return d.cfg.HostNS.SetBridgePortIsolated(ctx, hostIf, true)
	}
	return nil
}

// Leave deletes the endpoint's veth pair (both ends go with the host end)
// and returns once it is gone. With SandboxGone, the kernel destroys the
// pair with the sandbox's namespace: Leave waits for the host end to vanish,
// and deletes it after hostEndGrace if a process still holds the namespace.
func (d *driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	ep, err := n.endpoint(req.EndpointID)
	var hostIf string
	var hostIndex int
	if err == nil {
		hostIf, hostIndex = ep.hostIf, ep.hostIndex
	}
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if hostIf != "" {
		if req.SandboxGone {
			if err := d.waitGone(ctx, hostIndex, hostIf); err != nil {
				return err
			}
		}
		if err := d.cfg.HostNS.DeleteLinkIndex(ctx, hostIndex, hostIf); err != nil {
			return err
		}
	}
	n.mu.Lock()
	ep.hostIf, ep.hostIndex = "", 0
	n.mu.Unlock()
	return nil
}

// hostEndGrace is how long Leave waits for the kernel to destroy a dropped
// sandbox namespace's veth before it deletes the pair itself. The kernel's
// namespace cleanup usually takes a few milliseconds; a namespace that a
// process or a socket holds is never destroyed.
const hostEndGrace = time.Second

// waitGone waits until the host end with that index (0: unknown) and name
// is gone, for
// hostEndGrace at most; it returns early only when ctx ends.
func (d *driver) waitGone(ctx context.Context, index int, name string) error {
	deadline := time.Now().Add(hostEndGrace)
	for wait := time.Millisecond; time.Now().Before(deadline); wait = min(2*wait, 100*time.Millisecond) {
		var l osl.Link
		var err error
		if index > 0 {
			l, err = d.cfg.HostNS.LinkByIndex(ctx, index)
		} else {
			l, err = d.cfg.HostNS.LinkByName(ctx, name)
		}
		if errors.Is(err, osl.ErrLinkNotFound) || (err == nil && l.Name != name) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return nil
}
