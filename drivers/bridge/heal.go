package bridge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/osl"
)

var _ driverapi.Healer = (*driver)(nil)

// Heal puts back what something else deleted or changed of the driver's
// objects in the host namespace, as its own state says they are:
//
//   - a deleted bridge is made again, with its MAC, MTU, addresses and
//     switches, and every joined endpoint's port is plugged back in with
//     its isolation and hairpin mode;
//   - a bridge or a port set down is set up;
//   - a port taken off its bridge is plugged back in;
//   - the firewall's table is rebuilt whole, in one transaction, with every
//     network's rules and every published port;
//   - forwarding, which networks that route out of their bridge need, is
//     switched on again.
//
// It reads each link's state from the kernel before it acts, so a change
// the driver made itself is never taken for damage. Links the driver does
// not know are never touched.
func (d *driver) Heal(ctx context.Context, req driverapi.HealRequest) ([]driverapi.Healed, error) {
	if !req.All && !req.Firewall && !req.Forwarding && !d.damaged(req.Links) {
		return nil, nil // the common case: the announcements of cnm's own work
	}
	d.healMu.Lock()
	defer d.healMu.Unlock()
	skip := req.Skip
	if skip == nil {
		skip = func(string) bool { return false }
	}
	touched := map[int]bool{}        // by index: bridges
	addrGone := map[int]bool{}       // by index: an address deleted
	touchedName := map[string]bool{} // by name: ports
	for _, l := range req.Links {
		touched[l.Index] = true
		addrGone[l.Index] = addrGone[l.Index] || l.AddressGone
		if l.Name != "" {
			touchedName[l.Name] = true
		}
	}
	d.mu.Lock()
	var nets []*network
	for _, n := range d.networks {
		if n.ready {
			nets = append(nets, n)
		}
	}
	d.mu.Unlock()

	var (
		out  []driverapi.Healed
		errs []error
	)
	rebuild := req.Firewall || req.All
	for _, n := range nets {
		healed, remade, err := d.healNetwork(ctx, n, req.All, touched, addrGone, touchedName, skip)
		out = append(out, healed...)
		rebuild = rebuild || remade
		if err != nil {
			errs = append(errs, fmt.Errorf("bridge network %s: %w", n.id, err))
		}
	}
	if req.Forwarding || req.All {
		healed, err := d.healForwarding(ctx, nets, skip)
		out = append(out, healed...)
		errs = append(errs, err)
	}
	if rebuild {
		obj := "table inet " + d.cfg.Firewall.Name()
		if !skip(obj) {
			detail, err := d.rebuildFirewall(ctx, nets)
			if err != nil {
				errs = append(errs, err)
			} else if req.Firewall {
				out = append(out, driverapi.Healed{Object: obj, Detail: detail})
			}
		}
	}
	return out, errors.Join(errs...)
}

// damaged reports whether any of the announced changes may have damaged
// the driver's objects: a bridge of its own deleted or down, a port of its
// own down or off its bridge. A deleted port is not damage (it went with
// its sandbox, or a leave deleted it), and a new link is none of its
// business. No kernel call: the announcements say enough to rule out
// the changes cnm makes itself, as a join's port is made up and on its
// bridge in one request.
func (d *driver) damaged(links []driverapi.LinkChange) bool {
	bridges := map[int]bool{} // the bridges' indexes
	ports := map[string]int{} // host ends, to their bridge's index
	d.mu.Lock()
	for _, n := range d.networks {
		if !n.ready {
			continue
		}
		n.mu.Lock()
		bridges[n.bridge] = true
		for _, ep := range n.endpoints {
			if ep.hostIf != "" {
				ports[ep.hostIf] = n.bridge
			}
		}
		n.mu.Unlock()
	}
	d.mu.Unlock()
	for _, l := range links {
		if bridges[l.Index] && (l.Deleted || !l.Up || l.AddressGone) {
			return true
		}
		if bridge, ok := ports[l.Name]; ok && !l.Deleted && (!l.Up || l.Master != bridge) {
			return true
		}
	}
	return false
}

// healNetwork checks one network's bridge and ports. remade reports that
// the bridge was made again.
func (d *driver) healNetwork(ctx context.Context, n *network, all bool, touched, addrGone map[int]bool, touchedName map[string]bool,
	skip func(string) bool) (out []driverapi.Healed, remade bool, err error) {
	host := d.cfg.HostNS
	obj := "bridge " + n.opts.bridgeName
	if !skip(obj) && (all || touched[n.bridgeIndex()]) {
		l, err := host.LinkByIndex(ctx, n.bridgeIndex())
		if err == nil && (l.Name != n.opts.bridgeName || l.Alias != d.cfg.Owner.Link(n.id)) {
			err = osl.ErrLinkNotFound // the index was reused by another link
		}
		switch {
		case errors.Is(err, osl.ErrLinkNotFound):
			ports, err := d.remakeBridge(ctx, n)
			if err != nil {
				return out, false, err
			}
			out = append(out, driverapi.Healed{NetworkID: n.id, Object: obj,
				Detail: fmt.Sprintf("made again with its addresses; %d ports plugged back in", ports)})
			return out, true, nil
		case err != nil:
			return out, false, err
		case !l.Up:
			if err := host.SetLinkUp(ctx, l.Index); err != nil {
				return out, false, err
			}
			out = append(out, driverapi.Healed{NetworkID: n.id, Object: obj, Detail: "set up"})
		}
		if all || addrGone[n.bridgeIndex()] {
			for _, a := range n.gwAddrs {
				err := host.AddAddress(ctx, l.Index, a)
				if err == nil {
					out = append(out, driverapi.Healed{NetworkID: n.id, Object: obj, Detail: "address " + a.String() + " put back"})
				} else if !errors.Is(err, syscall.EEXIST) {
					return out, false, err
				}
			}
		}
	}
	for _, hostIf := range n.ports() {
		pobj := "link " + hostIf
		if skip(pobj) || !(all || touchedName[hostIf]) {
			continue
		}
		l, err := host.LinkByName(ctx, hostIf)
		if errors.Is(err, osl.ErrLinkNotFound) {
			continue // gone with its sandbox, or leaving: nothing to put back
		}
		if err != nil {
			return out, false, err
		}
		bridge := n.bridgeIndex()
		if l.MasterIndex != bridge {
			if err := d.plugPort(ctx, n, l, bridge); err != nil {
				return out, false, err
			}
			out = append(out, driverapi.Healed{NetworkID: n.id, Object: pobj, Detail: "plugged back into " + n.opts.bridgeName})
			continue
		}
		if !l.Up {
			if err := host.SetLinkUp(ctx, l.Index); err != nil {
				return out, false, err
			}
			out = append(out, driverapi.Healed{NetworkID: n.id, Object: pobj, Detail: "set up"})
		}
	}
	return out, false, nil
}

// ports returns the host ends of the network's joined endpoints.
func (n *network) ports() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, ep := range n.endpoints {
		if ep.hostIf != "" {
			out = append(out, ep.hostIf)
		}
	}
	return out
}

// remakeBridge makes a deleted bridge again as createNetwork made it, and
// plugs the joined endpoints' ports back in. It returns how many.
func (d *driver) remakeBridge(ctx context.Context, n *network) (int, error) {
	host := d.cfg.HostNS
	idx, err := host.AddBridge(ctx, osl.BridgeSpec{Name: n.opts.bridgeName, MTU: n.opts.mtu, MAC: n.bridgeHW, Alias: d.cfg.Owner.Link(n.id)})
	if err != nil {
		return 0, fmt.Errorf("make bridge %s again: %w", n.opts.bridgeName, err)
	}
	n.mu.Lock()
	n.bridge = idx
	localnet := n.localnet
	n.mu.Unlock()
	if !d.cfg.LeaveHostSysctls {
		err := host.SetSysctl("net/ipv6/conf/"+n.opts.bridgeName+"/accept_ra", "0")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		if localnet {
			if err := host.SetSysctl("net/ipv4/conf/"+n.opts.bridgeName+"/route_localnet", "1"); err != nil {
				return 0, err
			}
		}
	}
	for _, a := range n.gwAddrs {
		if err := host.AddAddress(ctx, idx, a); err != nil && !errors.Is(err, syscall.EEXIST) {
			return 0, err
		}
	}
	if err := host.SetLinkUp(ctx, idx); err != nil {
		return 0, err
	}
	plugged := 0
	for _, hostIf := range n.ports() {
		l, err := host.LinkByName(ctx, hostIf)
		if errors.Is(err, osl.ErrLinkNotFound) {
			continue
		}
		if err != nil {
			return plugged, err
		}
		if err := d.plugPort(ctx, n, l, idx); err != nil {
			return plugged, err
		}
		plugged++
	}
	return plugged, nil
}

// plugPort plugs a port into the network's bridge with everything Join
// gives it: MTU, isolation, hairpin mode for an endpoint with published
// ports, and up.
func (d *driver) plugPort(ctx context.Context, n *network, l osl.Link, bridge int) error {
	host := d.cfg.HostNS
	if n.opts.mtu > 0 && l.MTU != n.opts.mtu {
		if err := host.SetLinkMTU(ctx, l.Index, n.opts.mtu); err != nil {
			return err
		}
	}
	if err := host.SetLinkMaster(ctx, l.Index, bridge); err != nil {
		return err
	}
	if err := d.configurePort(ctx, n, l.Name); err != nil {
		return err
	}
	if n.publishes(l.Name) {
		if err := host.SetBridgePortHairpin(ctx, l.Name, true); err != nil {
			return err
		}
	}
	return host.SetLinkUp(ctx, l.Index)
}

// publishes reports whether the endpoint with host end hostIf has
// published ports.
func (n *network) publishes(hostIf string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ep := range n.endpoints {
		if ep.hostIf == hostIf {
			return len(ep.ports) > 0
		}
	}
	return false
}

// rebuildFirewall rebuilds the firewall's table from the networks' rules
// and the published ports.
func (d *driver) rebuildFirewall(ctx context.Context, nets []*network) (string, error) {
	var (
		fws   []firewall.Network
		ports []firewall.Port
	)
	for _, n := range nets {
		fws = append(fws, n.fw)
		n.mu.Lock()
		for _, ep := range n.endpoints {
			ports = append(ports, ep.ports...)
		}
		n.mu.Unlock()
	}
	if err := d.cfg.Firewall.Rebuild(ctx, fws, ports); err != nil {
		return "", err
	}
	return fmt.Sprintf("rebuilt with %d networks and %d published ports", len(fws), len(ports)), nil
}

// healForwarding switches forwarding on again where a network that routes
// out of its bridge needs it.
func (d *driver) healForwarding(ctx context.Context, nets []*network, skip func(string) bool) ([]driverapi.Healed, error) {
	need4, need6 := false, false
	for _, n := range nets {
		if !n.internal {
			need4 = true
			need6 = need6 || n.gw6.IsValid()
		}
	}
	var out []driverapi.Healed
	for _, f := range []struct {
		need bool
		name string
		v6   bool
	}{{need4, sysctlForward4, false}, {need6, sysctlForward6, true}} {
		obj := "sysctl " + f.name
		if !f.need || skip(obj) {
			continue
		}
		v, err := d.cfg.HostNS.Sysctl(f.name)
		if err != nil {
			return out, err
		}
		if v == "1" {
			continue
		}
		done, err := d.ensureForwarding(ctx, f.v6)
		if err != nil {
			return out, err
		}
		done(true)
		out = append(out, driverapi.Healed{Object: obj, Detail: "switched on again"})
	}
	return out, nil
}
