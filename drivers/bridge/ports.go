package bridge

import (
	"context"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/osl"
)

var _ driverapi.ExternalConnector = (*driver)(nil)

// ProgramExternalConnectivity publishes an endpoint's bound ports: one
// atomic batch of DNAT map elements in the controller's firewall (see
// firewall.Port), hairpin mode on the endpoint's bridge port (br_netfilter
// hands a container's packet to its own published port back to the port it
// came from), route_localnet on the bridge for ports that the host's
// 127.0.0.1 reaches, and no UDP conntrack entry left from an earlier user of
// the port.
func (d *driver) ProgramExternalConnectivity(ctx context.Context, req driverapi.ExternalRequest) error {
	d.healMu.RLock()
	defer d.healMu.RUnlock()
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
	if hostIf == "" {
		return fmt.Errorf("%w: endpoint %s is not joined: no port to publish to", driverapi.ErrInvalid, req.EndpointID)
	}
	ports, err := n.firewallPorts(req)
	if err != nil {
		return err
	}
	if err := d.enableLocalnet(ctx, n, ports); err != nil {
		return err
	}
	if err := d.cfg.HostNS.SetBridgePortHairpin(ctx, hostIf, true); err != nil {
		return err
	}
	if err := d.cfg.Firewall.AddPorts(ctx, ports...); err != nil {
		return err
	}
	if err := d.flushConntrack(ctx, ports); err != nil {
		_ = d.cfg.Firewall.RemovePorts(context.WithoutCancel(ctx), ports...)
		return err
	}
	n.mu.Lock()
	ep.ports = ports
	n.mu.Unlock()
	return nil
}

// RevokeExternalConnectivity withdraws an endpoint's published ports and
// the UDP conntrack entries that would send more traffic their way.
func (d *driver) RevokeExternalConnectivity(ctx context.Context, req driverapi.ExternalRequest) error {
	d.healMu.RLock()
	defer d.healMu.RUnlock()
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	ep, err := n.endpoint(req.EndpointID)
	var ports []firewall.Port
	if err == nil {
		ports = ep.ports
	}
	n.mu.Unlock()
	if err != nil || len(ports) == 0 {
		return err
	}
	if err := d.cfg.Firewall.RemovePorts(ctx, ports...); err != nil {
		return err
	}
	if err := d.flushConntrack(ctx, ports); err != nil {
		return err
	}
	n.mu.Lock()
	ep.ports = nil
	n.mu.Unlock()
	return nil
}

// firewallPorts describes bound ports to the firewall: each goes to the
// endpoint's address of its host address's family.
func (n *network) firewallPorts(req driverapi.ExternalRequest) ([]firewall.Port, error) {
	out := make([]firewall.Port, 0, len(req.Ports))
	for _, p := range req.Ports {
		to := req.IPv4
		if p.HostIP.Is6() {
			to = req.IPv6
		}
		if !to.IsValid() {
			return nil, fmt.Errorf("%w: published port %s:%d: the endpoint has no address of that family", driverapi.ErrInvalid, p.HostIP, p.HostPort)
		}
		out = append(out, firewall.Port{
			NetworkID: n.id, Bridge: n.opts.bridgeName, Proto: p.Proto,
			HostIP: p.HostIP, HostPort: p.HostPort, ContainerIP: to, ContainerPort: p.ContainerPort,
		})
	}
	return out, nil
}

// enableLocalnet turns route_localnet on on the network's bridge the first
// time one of its ports is reachable from 127.0.0.1 (an IPv4 port on every
// host address, or on a loopback one): a packet from 127.0.0.1 may then be
// routed out of the bridge, where the firewall masquerades it. Only this
// bridge gets it; a runtime that manages sysctls itself
// (Config.LeaveHostSysctls) sets it, or its ports are not reachable from
// 127.0.0.1.
func (d *driver) enableLocalnet(ctx context.Context, n *network, ports []firewall.Port) error {
	if d.cfg.LeaveHostSysctls {
		return nil
	}
	need := false
	for _, p := range ports {
		need = need || (p.HostIP.Is4() && (p.HostIP.IsUnspecified() || p.HostIP.IsLoopback()))
	}
	n.mu.Lock()
	done := n.localnet
	n.mu.Unlock()
	if !need || done {
		return nil
	}
	if err := d.cfg.HostNS.SetSysctl("net/ipv4/conf/"+n.opts.bridgeName+"/route_localnet", "1"); err != nil {
		return err
	}
	n.mu.Lock()
	n.localnet = true
	n.mu.Unlock()
	return nil
}

// flushConntrack deletes the UDP conntrack entries of the ports, in one
// pass: a client that keeps sending datagrams would otherwise keep reaching
// the container its entry was made for, even after the port moved to
// another. An unspecified host address matches every destination address.
func (d *driver) flushConntrack(ctx context.Context, ports []firewall.Port) error {
	var matches []osl.ConntrackMatch
	for _, p := range ports {
		if p.Proto == "udp" {
			matches = append(matches, osl.ConntrackMatch{Proto: p.Proto, Dst: p.HostIP, Port: p.HostPort})
		}
	}
	if _, err := d.cfg.HostNS.DeleteConntracks(ctx, matches...); err != nil {
		return fmt.Errorf("flush the udp conntrack entries of published ports: %w", err)
	}
	return nil
}
