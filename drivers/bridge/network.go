package bridge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"path"
	"slices"
	"syscall"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mac"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/osl"
)

// CreateNetwork turns IP forwarding on in the host namespace if the network
// routes out of its bridge (see Config.LeaveHostSysctls), makes the bridge,
// gives it the gateway addresses, brings it up and installs the network's
// firewall rules. On error nothing of it is left, and every host sysctl it
// changed has its value back.
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
	d.healMu.RLock()
	defer d.healMu.RUnlock()
	opts, err := parseOptions(req.Options)
	if err != nil {
		return err
	}
	if req.IPv6 != nil {
		if err := opts.checkIPv6(); err != nil {
			return err
		}
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

	if !req.Internal {
		done, err := d.ensureForwarding(ctx, req.IPv6 != nil)
		if err != nil {
			return fmt.Errorf("bridge network %s: %w", req.ID, err)
		}
		defer func() { done(retErr == nil) }()
	}

	host := d.cfg.HostNS
	adopted := false
	if restore {
		l, err := host.LinkByName(ctx, opts.bridgeName)
		switch {
		case err == nil && l.Alias == d.cfg.Owner.Link(req.ID):
			n.bridge, n.bridgeHW, adopted = l.Index, l.MAC, true
		case err == nil:
			return fmt.Errorf("%w: restore network %s: link %s exists but is not this network's bridge (alias %q)", driverapi.ErrExists, req.ID, opts.bridgeName, l.Alias)
		case !errors.Is(err, osl.ErrLinkNotFound):
			return err
		}
	}
	if !adopted {
		n.bridgeHW = mac.Random()
		br, err := host.AddBridge(ctx, osl.BridgeSpec{Name: opts.bridgeName, MTU: opts.mtu, MAC: n.bridgeHW, Alias: d.cfg.Owner.Link(req.ID)})
		if err != nil {
			if errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("%w: option %s=%q: a link of that name exists in the host namespace", driverapi.ErrExists, OptionBridgeName, opts.bridgeName)
			}
			return err
		}
		n.bridge = br
		defer func() {
			if retErr != nil {
				if err := host.DeleteLink(context.WithoutCancel(ctx), opts.bridgeName); err != nil {
					d.log.Warn("bridge: rollback: delete bridge", "bridge", opts.bridgeName, "err", err)
				}
			}
		}()
	}
	br := n.bridge
	if !d.cfg.LeaveHostSysctls {
		// The host takes no router advertisements from its containers
		// through the bridge (with forwarding off, accept_ra=1 would let a
		// container give the host a default route). A bridge with an MTU
		// below 1280 has no IPv6 at all, nor the file.
		err := host.SetSysctl("net/ipv6/conf/"+opts.bridgeName+"/accept_ra", "0")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}

	var subnets []netip.Prefix
	for _, ipd := range []*driverapi.IPAMData{req.IPv4, req.IPv6} {
		if ipd == nil {
			continue
		}
		subnets = append(subnets, ipd.Pool)
		if !ipd.Gateway.IsValid() {
			continue
		}
		if err := host.AddAddress(ctx, br, ipd.Gateway); err != nil && !(adopted && errors.Is(err, syscall.EEXIST)) {
			return err
		}
		n.gwAddrs = append(n.gwAddrs, ipd.Gateway)
		if ipd.Gateway.Addr().Is4() {
			n.gw4 = ipd.Gateway.Addr()
		} else {
			n.gw6 = ipd.Gateway.Addr()
		}
	}
	if n.gw6.IsValid() && !req.IPv6.Pool.Contains(bridgeLinkLocal.Addr()) {
		// Forwarded IPv6 (a published port, a routed client) needs a
		// neighbour solicitation from the bridge, and the kernel sends
		// none before the bridge has a link-local address past DAD: the
		// one it makes itself is ready 1-2 s after the first port comes
		// up. A fixed one without DAD is ready at once, as Docker's
		// fe80::1 on its bridges. (A link-local subnet's gateway is one
		// already, and fe80::1 may be a container's there.)
		if err := host.AddAddress(ctx, br, bridgeLinkLocal); err != nil && !(adopted && errors.Is(err, syscall.EEXIST)) {
			return err
		}
		n.gwAddrs = append(n.gwAddrs, bridgeLinkLocal)
	}
	if err := host.SetLinkUp(ctx, br); err != nil {
		return err
	}
	// Join isolates every port of a network without ICC, which is what
	// keeps its containers apart; the firewall needs no help for it.
	n.fw = firewall.Network{
		ID:         req.ID,
		Bridge:     opts.bridgeName,
		Subnets:    subnets,
		Masquerade: opts.masquerade,
		ICC:        opts.icc,
		Internal:   req.Internal,
	}
	err = d.cfg.Firewall.AddNetwork(ctx, n.fw)
	if restore && errors.Is(err, driverapi.ErrExists) {
		err = nil // the rules survived the restart
	}
	if err == nil {
		d.mu.Lock()
		n.ready = true
		d.mu.Unlock()
	}
	return err
}

// bridgeLinkLocal is the link-local address every bridge with IPv6 gets,
// without DAD (see createNetwork).
var bridgeLinkLocal = netip.MustParsePrefix("fe80::1/64")

// Host-wide switches that a network routing out of its bridge needs.
const (
	sysctlForward4 = "net.ipv4.ip_forward"
	sysctlForward6 = "net.ipv6.conf.all.forwarding"
)

// sysctlValue is a host sysctl and a value of it.
type sysctlValue struct{ name, value string }

// ensureForwarding turns IP forwarding on in the host namespace, for IPv6
// too if ipv6, for a network that routes out of its bridge. It is a
// host-wide switch that Docker turns on too; once a network that needs it
// is made, it is never turned off again.
//
// With Config.LeaveHostSysctls it writes nothing, and fails, naming the
// sysctl, if forwarding is off.
//
// The caller must call done once, with whether the network was made; if
// not, done puts back every sysctl this call changed. If it changed any,
// other calls wait here until then, so that no other network finds
// forwarding on, relies on it, and loses it to this rollback.
func (d *driver) ensureForwarding(ctx context.Context, ipv6 bool) (done func(ok bool), err error) {
	host := d.cfg.HostNS
	names := []string{sysctlForward4}
	if ipv6 {
		names = append(names, sysctlForward6)
	}
	d.sysctlMu.Lock()
	var changed []sysctlValue // the values before, in the order written
	undo := func() {
		for i := len(changed) - 1; i >= 0; i-- {
			c := changed[i]
			if err := host.SetSysctl(c.name, c.value); err != nil {
				d.log.Warn("bridge: rollback: restore host sysctl", "sysctl", c.name, "value", c.value, "err", err)
			}
		}
		d.sysctlMu.Unlock()
	}
	for _, name := range names {
		if err := d.switchOn(ctx, name, &changed); err != nil {
			undo()
			return nil, err
		}
	}
	if len(changed) == 0 {
		d.sysctlMu.Unlock()
		return func(bool) {}, nil
	}
	return func(ok bool) {
		if ok {
			changed = nil
		}
		undo()
	}, nil
}

// switchOn sets the host sysctl name to 1 unless it is already, and appends
// what it changed to changed.
func (d *driver) switchOn(ctx context.Context, name string, changed *[]sysctlValue) error {
	host := d.cfg.HostNS
	v, err := host.Sysctl(name)
	switch {
	case err != nil:
		return err
	case v == "1":
		return nil
	case d.cfg.LeaveHostSysctls:
		return fmt.Errorf("%w: routing out of the bridge needs %s=1 in the host namespace, where it is %s, "+
			"and the driver leaves host sysctls to the runtime", driverapi.ErrNotSupported, name, v)
	}
	if name == sysctlForward6 {
		if err := d.keepAcceptingRAs(ctx, changed); err != nil {
			return err
		}
	}
	if err := host.SetSysctl(name, "1"); err != nil {
		return err
	}
	*changed = append(*changed, sysctlValue{name, v})
	return nil
}

// keepAcceptingRAs sets accept_ra=2 on every interface of the host
// namespace whose accept_ra is 1, and appends what it changed to changed.
// With forwarding on, the kernel ignores router advertisements on an
// interface with accept_ra=1 and drops the default route it learned from
// them, so a host that configures itself by SLAAC would lose its way out;
// 2 accepts them even so (Documentation/networking/ip-sysctl.rst).
//
// It leaves cnm's links (any controller's marked links, and their ports)
// at 1, and "default", which new links such as cnm's bridges start with:
// with forwarding on, a bridge at 1 ignores router advertisements that a
// container sends.
func (d *driver) keepAcceptingRAs(ctx context.Context, changed *[]sysctlValue) error {
	host := d.cfg.HostNS
	links, err := host.Links(ctx)
	if err != nil {
		return err
	}
	marked := map[int]bool{}
	for _, l := range links {
		// Every cnm mark starts so (internal/mark), whichever controller made it.
		if mark.IsAnyControllers(l.Alias) {
			marked[l.Index] = true
		}
	}
	skip := map[string]bool{"all": true, "default": true}
	for _, l := range links {
		if marked[l.Index] || marked[l.MasterIndex] {
			skip[l.Name] = true
		}
	}
	ras, err := host.Sysctls("net/ipv6/conf/*/accept_ra")
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(ras)) {
		ifname := path.Base(path.Dir(name))
		if ras[name] != "1" || skip[ifname] {
			continue
		}
		err := host.SetSysctl(name, "2")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the interface is gone
		}
		if err != nil {
			return fmt.Errorf("keep interface %s accepting router advertisements before turning on %s: %w",
				ifname, sysctlForward6, err)
		}
		*changed = append(*changed, sysctlValue{name, "1"})
	}
	return nil
}

// DeleteNetwork removes the network's firewall rules and its bridge.
func (d *driver) DeleteNetwork(ctx context.Context, id string) error {
	d.healMu.RLock()
	defer d.healMu.RUnlock()
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
	// retried. Healing stops first: a bridge being deleted is not put back.
	d.mu.Lock()
	n.ready = false
	d.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	err = d.cfg.HostNS.DeleteLink(ctx, n.opts.bridgeName)
	if err == nil {
		err = d.cfg.Firewall.RemoveNetwork(ctx, id)
	}
	if err != nil {
		d.mu.Lock()
		n.ready = true
		d.mu.Unlock()
		return err
	}
	d.mu.Lock()
	delete(d.networks, id)
	d.mu.Unlock()
	return nil
}
