package overlay

import (
	"context"
	"fmt"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
)

// CreateNetwork validates the network and records it. It makes no kernel
// object: a network's namespace is made at its first Join on this host.
// It checks that Config.AdvertiseAddress is on a link of the host
// namespace, whose MTU gives the default MTU. An encrypted network is
// refused with ErrNotSupported (see [OptionEncrypted]). An internal network
// (req.Internal) is recorded like any other: the driver never offers a way
// out of an overlay network (Join reports no gateway).
func (d *Driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	n, err := d.newNetwork(ctx, req)
	if err != nil {
		return err
	}
	return d.addNetwork(n)
}

// newNetwork validates a network's request and returns its state; it
// records nothing. The ESP probe of an encrypted network comes last, once
// everything else is known to be good.
func (d *Driver) newNetwork(ctx context.Context, req driverapi.NetworkRequest) (*network, error) {
	if req.ID == "" {
		return nil, fmt.Errorf("%w: overlay network: empty ID", driverapi.ErrInvalid)
	}
	if strings.ContainsAny(req.ID, "/\x00") {
		// It names a file (see sandboxPath).
		return nil, fmt.Errorf("%w: overlay network ID %q: has a '/' or NUL", driverapi.ErrInvalid, req.ID)
	}
	opts, err := parseOptions(req.Options, req.IPv6 != nil)
	if err != nil {
		return nil, err
	}
	n := &network{id: req.ID, vni: opts.vni, mtu: opts.mtu, ipv6: req.IPv6 != nil, internal: req.Internal, endpoints: map[string]*endpoint{}}
	for _, data := range []*driverapi.IPAMData{req.IPv4, req.IPv6} {
		if data == nil || !data.Gateway.IsValid() {
			continue
		}
		if !data.Pool.Contains(data.Gateway.Addr()) {
			return nil, fmt.Errorf("%w: overlay network %s: gateway %s outside subnet %s", driverapi.ErrInvalid, req.ID, data.Gateway, data.Pool)
		}
		n.gws = append(n.gws, data.Gateway)
	}
	if n.mtu == 0 {
		n.mtu = d.cfg.MTU
	}
	if n.mtu == 0 {
		ul, err := d.underlayMTU(ctx)
		if err != nil {
			return nil, err
		}
		if err := checkMTU(fmt.Sprintf("MTU (underlay MTU %d - %d)", ul, d.overhead()), ul-d.overhead(), n.ipv6); err != nil {
			return nil, err
		}
		n.mtu = ul - d.overhead()
	} else if n.ipv6 {
		if err := checkMTU("MTU", n.mtu, true); err != nil {
			return nil, err
		}
	}
	if err := d.conflict(n); err != nil {
		return nil, err
	}
	if opts.encrypted {
		if err := d.checkEncryption(ctx, req.ID, opts.encryptedValue); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// addNetwork records n, checking again (under the lock) that nothing
// recorded conflicts with it.
func (d *Driver) addNetwork(n *network) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.conflictLocked(n); err != nil {
		return err
	}
	d.networks[n.id] = n
	return nil
}

// conflict reports a recorded network that n cannot live beside.
func (d *Driver) conflict(n *network) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conflictLocked(n)
}

// conflictLocked reports a recorded network with n's ID, n's VNI, or the
// same namespace path (IDs that share their first 12 characters: see
// [Driver.sandboxPath]). The caller holds d.mu.
func (d *Driver) conflictLocked(n *network) error {
	if _, ok := d.networks[n.id]; ok {
		return fmt.Errorf("%w: overlay network %s", driverapi.ErrExists, n.id)
	}
	path := d.sandboxPath(n.id)
	for _, o := range d.networks {
		if o.vni == n.vni {
			return fmt.Errorf("%w: overlay option %s=%d: VNI used by network %s", driverapi.ErrExists, OptionVNI, n.vni, o.id)
		}
		if d.sandboxPath(o.id) == path {
			return fmt.Errorf("%w: overlay network ID %q: its namespace %s would be that of network %q (same first %d characters)",
				driverapi.ErrExists, n.id, path, o.id, idPrefixLen)
		}
	}
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
	if n.idle != nil {
		n.idle.Stop()
		n.idle = nil
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

// Close stops the driver's timers: idle namespaces are no longer dropped
// (a later driver's FinishRestore drops them). Nothing else is touched:
// the data plane keeps running.
func (d *Driver) Close() {
	for _, n := range d.snapshot() {
		n.mu.Lock()
		if n.idle != nil {
			n.idle.Stop()
			n.idle = nil
		}
		n.mu.Unlock()
	}
}

// snapshot returns the networks recorded now.
func (d *Driver) snapshot() []*network {
	d.mu.Lock()
	defer d.mu.Unlock()
	nets := make([]*network, 0, len(d.networks))
	for _, n := range d.networks {
		nets = append(nets, n)
	}
	return nets
}
