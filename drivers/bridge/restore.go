package bridge

import (
	"context"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
)

var _ driverapi.Restorer = (*driver)(nil)

// RestoreEndpoint takes an endpoint back. For a joined one it finds the host
// end of its veth pair through the peer index of the interface inside the
// sandbox.
func (d *driver) RestoreEndpoint(ctx context.Context, req driverapi.RestoreEndpointRequest) error {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	ep := &endpoint{}
	if req.Sandbox != nil {
		l, err := req.Sandbox.LinkByName(ctx, req.InterfaceName)
		if err != nil {
			return err
		}
		h, err := d.cfg.HostNS.LinkByIndex(ctx, l.PeerIndex)
		if err != nil {
			return fmt.Errorf("restore endpoint %s: host end of %s: %w", req.EndpointID, req.InterfaceName, err)
		}
		if h.MasterIndex != n.bridgeIndex() {
			// The bridge was made again (it had been deleted while the
			// sandbox lived on): plug the port back in, with everything a
			// port of this network gets at Join.
			if n.opts.mtu > 0 && h.MTU != n.opts.mtu {
				if err := d.cfg.HostNS.SetLinkMTU(ctx, h.Index, n.opts.mtu); err != nil {
					return err
				}
			}
			if err := d.cfg.HostNS.SetLinkMaster(ctx, h.Index, n.bridgeIndex()); err != nil {
				return err
			}
			if err := d.configurePort(ctx, n, h.Name); err != nil {
				return err
			}
			if err := d.cfg.HostNS.SetLinkUp(ctx, h.Index); err != nil {
				return err
			}
		}
		ep.hostIf, ep.hostIndex = h.Name, h.Index
		if len(req.Ports) > 0 {
			ports, err := n.firewallPorts(driverapi.ExternalRequest{
				NetworkID: req.NetworkID, EndpointID: req.EndpointID,
				IPv4: req.IPv4.Addr(), IPv6: req.IPv6.Addr(), Ports: req.Ports,
			})
			if err != nil {
				return err
			}
			ep.ports = ports
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.endpoints[req.EndpointID] = ep
	return nil
}

// FinishRestore deletes the veth ports of the driver's bridges that no
// restored endpoint owns: a crash between making an endpoint's veth pair
// and recording the join leaves such a port (and its peer in the sandbox,
// which goes with it). It then makes the firewall's published ports exactly
// those of the restored endpoints, in one batch: a port published by a join
// that a crash interrupted, or of an endpoint that is gone, goes; one that
// is missing comes back.
func (d *driver) FinishRestore(ctx context.Context) error {
	d.mu.Lock()
	owned := map[int]map[string]bool{} // bridge index -> host ends
	var published []firewall.Port
	for _, n := range d.networks {
		n.mu.Lock()
		bridge := n.bridge
		ends := map[string]bool{}
		for _, ep := range n.endpoints {
			if ep.hostIf != "" {
				ends[ep.hostIf] = true
			}
			published = append(published, ep.ports...)
		}
		n.mu.Unlock()
		owned[bridge] = ends
	}
	d.mu.Unlock()
	if err := d.cfg.Firewall.SetPorts(ctx, published...); err != nil {
		return err
	}
	links, err := d.cfg.HostNS.Links(ctx)
	if err != nil {
		return err
	}
	for _, l := range links {
		ends, ours := owned[l.MasterIndex]
		if !ours || l.Kind != "veth" || ends[l.Name] {
			continue
		}
		if err := d.cfg.HostNS.DeleteLink(ctx, l.Name); err != nil {
			return err
		}
	}
	return nil
}
