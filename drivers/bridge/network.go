package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mac"
	"github.com/seed53641549/cnm/osl"
	"golang.org/x/sys/unix"
)

// CreateNetwork makes the bridge, gives it the gateway addresses, brings it
// up, turns IP forwarding on in the host namespace and installs the
// network's firewall rules. On error nothing of it is left.
func (d *driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	return d.createNetwork(ctx, req, false)
}

// RestoreNetwork takes a network back after a restart: a bridge that still
// exists (marked with this network's ID) is adopted and its addresses,
// state and rules are made whole, without disturbing traffic; a bridge that
// is gone (after a reboot) is made again.
func (d *driver) RestoreNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	return d.createNetwork(ctx, req, true)
}

func (d *driver) createNetwork(ctx context.Context, req driverapi.NetworkRequest, restore bool) (retErr error) {
	opts, err := parseOptions(req.Options)
	if err != nil {
		return err
	}
	if opts.bridgeName == "" {
		id := req.ID
		if len(id) > 12 {
			id = id[:12]
		}
		opts.bridgeName = "br-" + id
	}
	n := &network{id: req.ID, opts: opts, internal: req.Internal, endpoints: map[string]*endpoint{}}

	// Claim the ID and bridge name before any kernel work, so two concurrent
	// creations cannot both pass the check.
	d.mu.Lock()
	if _, ok := d.networks[req.ID]; ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: bridge network %s", driverapi.ErrExists, req.ID)
	}
	for _, other := range d.networks {
		if other.opts.bridgeName == opts.bridgeName {
			d.mu.Unlock()
			return fmt.Errorf("%w: option %s=%q: bridge is used by network %s", driverapi.ErrExists, OptionBridgeName, opts.bridgeName, other.id)
		}
	}
	d.networks[req.ID] = n
	d.mu.Unlock()
	defer func() {
		if retErr != nil {
			d.mu.Lock()
			delete(d.networks, req.ID)
			d.mu.Unlock()
		}
	}()

	host := d.cfg.HostNS
	adopted := false
	if restore {
		l, err := host.LinkByName(ctx, opts.bridgeName)
		switch {
		case err == nil && l.Alias == Mark(req.ID):
			n.bridge, adopted = l.Index, true
		case err == nil:
			return fmt.Errorf("%w: restore network %s: link %s exists but is not this network's bridge (alias %q)", driverapi.ErrExists, req.ID, opts.bridgeName, l.Alias)
		case !errors.Is(err, osl.ErrLinkNotFound):
			return err
		}
	}
	if !adopted {
		br, err := host.AddBridge(ctx, osl.BridgeSpec{Name: opts.bridgeName, MTU: opts.mtu, MAC: mac.Random(), Alias: Mark(req.ID)})
		if err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: option %s=%q: a link of that name exists in the host namespace", driverapi.ErrExists, OptionBridgeName, opts.bridgeName)
			}
			return err
		}
		n.bridge = br
		defer func() {
			if retErr != nil {
				if err := host.DeleteLink(context.WithoutCancel(ctx), opts.bridgeName); err != nil {
					slog.Warn("bridge: rollback: delete bridge", "bridge", opts.bridgeName, "err", err)
				}
			}
		}()
	}
	br := n.bridge

	var subnets []netip.Prefix
	for _, ipd := range []*driverapi.IPAMData{req.IPv4, req.IPv6} {
		if ipd == nil {
			continue
		}
		subnets = append(subnets, ipd.Pool)
		if !ipd.Gateway.IsValid() {
			continue
		}
		if err := host.AddAddress(ctx, br, ipd.Gateway); err != nil && !(adopted && errors.Is(err, unix.EEXIST)) {
			return err
		}
		if ipd.Gateway.Addr().Is4() {
			n.gw4 = ipd.Gateway.Addr()
		} else {
			n.gw6 = ipd.Gateway.Addr()
		}
	}
	if err := host.SetLinkUp(ctx, br); err != nil {
		return err
	}
	if !req.Internal {
		// Routing out of the bridge needs forwarding; it is a host-wide switch
		// that Docker turns on too, and is never turned off again.
		if err := host.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
		if req.IPv6 != nil {
			if err := host.SetSysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
				return err
			}
		}
	}
	err = d.cfg.Firewall.AddNetwork(ctx, firewall.Network{
		ID:         req.ID,
		Bridge:     opts.bridgeName,
		Subnets:    subnets,
		Masquerade: opts.masquerade,
		ICC:        opts.icc,
		Internal:   req.Internal,
		// Join isolates every port of a network without ICC.
		PortsIsolated: true,
	})
	if restore && errors.Is(err, driverapi.ErrExists) {
		return nil // the rules survived the restart
	}
	return err
}

// Mark is the alias a bridge of network id carries, by which cnm recognises
// its bridges after a restart.
func Mark(id string) string { return "cnm:" + id }

// DeleteNetwork removes the network's firewall rules and its bridge.
func (d *driver) DeleteNetwork(ctx context.Context, id string) error {
	n, err := d.network(id)
	if err != nil {
		return err
	}
	n.mu.Lock()
	busy := len(n.endpoints)
	n.mu.Unlock()
	if busy > 0 {
		return fmt.Errorf("%w: bridge network %s has %d endpoints", driverapi.ErrInUse, id, busy)
	}
	// The bridge goes first: rules naming a bridge that no longer exists
	// match nothing, while a bridge without its rules would be a live network
	// without isolation. Both steps are idempotent, so a failed delete can be
	// retried.
	ctx = context.WithoutCancel(ctx)
	if err := d.cfg.HostNS.DeleteLink(ctx, n.opts.bridgeName); err != nil {
		return err
	}
	if err := d.cfg.Firewall.RemoveNetwork(ctx, id); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.networks, id)
	d.mu.Unlock()
	return nil
}
