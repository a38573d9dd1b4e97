package subif

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/parent"
)

// CreateNetwork checks the options and addressing, then resolves the parent:
// it checks an existing one, or makes an 802.1Q sub-interface or an internal
// network's own parent. It makes nothing else: the links are made at Join.
// On error nothing of it is left.
func (d *driver[M]) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	return d.createNetwork(ctx, req, false)
}

// RestoreNetwork takes a network back after a restart: its parent is looked
// up again; a sub-interface or internal parent the driver made is adopted if
// it still exists and made again if it is gone (after a reboot). A user's
// parent that is gone does not fail the restore: joins fail until it is back.
func (d *driver[M]) RestoreNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	return d.createNetwork(ctx, req, true)
}

func (d *driver[M]) createNetwork(ctx context.Context, req driverapi.NetworkRequest, restore bool) (retErr error) {
	k := &d.kind
	opts, err := k.ParseOptions(req.Options)
	if err != nil {
		return err
	}
	if req.IPv6 != nil && !restore {
		// Not at a restore: a network that was made is taken back as it is.
		if err := opts.checkIPv6(); err != nil {
			return err
		}
	}
	n := &network[M]{id: req.ID, opts: opts, internal: req.Internal || opts.Parent == "", endpoints: map[string]*endpoint{}}
	if req.Internal && opts.Parent != "" {
		// Docker would silently drop the parent and make a dummy one; a
		// network that is not what was asked for is worse than an error.
		return fmt.Errorf("%w: option %s=%q on an internal network: internal %s networks have a parent of their own; give no parent",
			driverapi.ErrInvalid, parent.OptionParent, opts.Parent, k.Type)
	}
	// A routed network's parent routes: no gateway address is needed or used.
	subnets, gw4, gw6, err := checkAddressing(req, n.internal || opts.Mode.Routed, k.NeedsGateway)
	if err != nil {
		return err
	}
	if !n.internal && !opts.Mode.Routed {
		n.gw4, n.gw6 = gw4, gw6
	}
	n.v4, n.v6 = req.IPv4 != nil, req.IPv6 != nil

	// Claim the ID before any kernel work; the network becomes visible (to
	// Join) only once complete.
	d.mu.Lock()
	if _, ok := d.networks[req.ID]; ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: %s network %s", driverapi.ErrExists, k.Type, req.ID)
	}
	d.networks[req.ID] = nil
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if retErr != nil {
			delete(d.networks, req.ID)
		} else {
			d.networks[req.ID] = n
		}
	}()

	n.parent, err = d.cfg.Parents.Acquire(ctx, parent.Request{
		NetworkID:    req.ID,
		Kind:         k.Type,
		Name:         opts.Parent,
		InternalName: k.internalName(req.ID),
		MTU:          opts.MTU,
		Exclusive:    opts.Mode.Exclusive,
		ExclusiveWhy: k.ModeOption + "=" + opts.Mode.Name,
		Subnets:      subnets,
		Restore:      restore,
	})
	return err
}

// checkAddressing returns the network's subnets and gateways, and checks
// that a network with a way out (not noWayOut) has a gateway (the physical
// network's router) inside its subnet in each family it has. needsGateway
// says who needs one, for the error: "a macvlan network with a parent".
func checkAddressing(req driverapi.NetworkRequest, noWayOut bool, needsGateway string) (subnets []netip.Prefix, gw4, gw6 netip.Addr, err error) {
	for _, ipd := range []*driverapi.IPAMData{req.IPv4, req.IPv6} {
		if ipd == nil {
			continue
		}
		subnets = append(subnets, ipd.Pool)
		gw := ipd.Gateway.Addr()
		switch {
		case !ipd.Gateway.IsValid() && noWayOut:
			continue
		case !ipd.Gateway.IsValid():
			return nil, gw4, gw6, fmt.Errorf("%w: network %s: subnet %s has no gateway: %s needs the address of the physical network's router",
				driverapi.ErrInvalid, req.Name, ipd.Pool, needsGateway)
		case !ipd.Pool.Contains(gw):
			return nil, gw4, gw6, fmt.Errorf("%w: network %s: gateway %s is outside subnet %s", driverapi.ErrInvalid, req.Name, gw, ipd.Pool)
		}
		if gw.Is4() {
			gw4 = gw
		} else {
			gw6 = gw
		}
	}
	return subnets, gw4, gw6, nil
}

// DeleteNetwork forgets the network and deletes its parent if the driver
// made it and no other network uses it. It fails, and can be retried, if
// that deletion fails.
func (d *driver[M]) DeleteNetwork(ctx context.Context, id string) error {
	n, err := d.network(id)
	if err != nil {
		return err
	}
	n.mu.Lock()
	busy := len(n.endpoints)
	n.mu.Unlock()
	if busy > 0 {
		return fmt.Errorf("%w: %s network %s has %d endpoints", driverapi.ErrInUse, d.kind.Type, id, busy)
	}
	if err := d.cfg.Parents.Release(context.WithoutCancel(ctx), id); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.networks, id)
	d.mu.Unlock()
	return nil
}
