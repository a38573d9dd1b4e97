package overlay

import (
	"context"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
)

// CreateNetwork validates the network and records it. It makes no kernel
// object: a network's namespace is made at its first Join on this host.
// It checks that Config.AdvertiseAddress is on a link of the host
// namespace, whose MTU gives the default MTU.
func (d *Driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	if req.ID == "" {
		return fmt.Errorf("%w: overlay network: empty ID", driverapi.ErrInvalid)
	}
	opts, err := parseOptions(req.Options, req.IPv6 != nil)
	if err != nil {
		return err
	}
	n := &network{id: req.ID, vni: opts.vni, mtu: opts.mtu, ipv6: req.IPv6 != nil, endpoints: map[string]*endpoint{}}
	for _, data := range []*driverapi.IPAMData{req.IPv4, req.IPv6} {
		if data == nil || !data.Gateway.IsValid() {
			continue
		}
		if !data.Pool.Contains(data.Gateway.Addr()) {
			return fmt.Errorf("%w: overlay network %s: gateway %s outside subnet %s", driverapi.ErrInvalid, req.ID, data.Gateway, data.Pool)
		}
		n.gws = append(n.gws, data.Gateway)
	}
	if n.mtu == 0 {
		n.mtu = d.cfg.MTU
	}
	if n.mtu == 0 {
		ul, err := d.underlayMTU(ctx)
		if err != nil {
			return err
		}
		if err := checkMTU(fmt.Sprintf("MTU (underlay MTU %d - %d)", ul, d.overhead()), ul-d.overhead(), n.ipv6); err != nil {
			return err
		}
		n.mtu = ul - d.overhead()
	} else if n.ipv6 {
		if err := checkMTU("MTU", n.mtu, true); err != nil {
			return err
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[req.ID]; ok {
		return fmt.Errorf("%w: overlay network %s", driverapi.ErrExists, req.ID)
	}
	for _, o := range d.networks {
		if o.vni == n.vni {
			return fmt.Errorf("%w: overlay option %s=%d: VNI used by network %s", driverapi.ErrExists, OptionVNI, n.vni, o.id)
		}
	}
	d.networks[req.ID] = n
	return nil
}

// underlayMTU returns the MTU of the host namespace's link that has
// Config.AdvertiseAddress.
func (d *Driver) underlayMTU(ctx context.Context) (int, error) {
	links, err := d.cfg.HostNS.Links(ctx)
	if err != nil {
		return 0, fmt.Errorf("overlay: find the underlay link: %w", err)
	}
	for _, l := range links {
		addrs, err := d.cfg.HostNS.Addresses(ctx, l.Index)
		if err != nil {
			return 0, fmt.Errorf("overlay: find the underlay link: %w", err)
		}
		for _, a := range addrs {
			if a.Addr() == d.cfg.AdvertiseAddress {
				return l.MTU, nil
			}
		}
	}
	return 0, fmt.Errorf("%w: overlay AdvertiseAddress=%s: no link of host namespace %s has it", driverapi.ErrInvalid, d.cfg.AdvertiseAddress, d.cfg.HostNS)
}

// DeleteNetwork forgets the network and drops its namespace if it still
// exists. A network with endpoints is refused with ErrInUse. The peers of
// the network are kept: the control plane removes them, and they are
// programmed again if the network comes back.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	n, err := d.network(id)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.endpoints) > 0 {
		return fmt.Errorf("%w: overlay network %s has %d endpoints", driverapi.ErrInUse, id, len(n.endpoints))
	}
	if n.sb != nil {
		if err := d.dropSandbox(ctx, n); err != nil {
			return err
		}
	}
	d.mu.Lock()
	delete(d.networks, id)
	d.mu.Unlock()
	return nil
}
