package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/ipam"
)

// Services: endpoints made with [WithService] on one local network share
// a virtual IP per address family (on a global network a service is a
// name only: see WithService), drawn from the network's IPAM when the
// first of them is made and released when the last is deleted. DNS answers
// the service's name with its VIPs, and tasks.<service> with the addresses
// of its live backends (its joined endpoints).
//
// Every sandbox joined to a network with services gets, in its own
// namespace, a table that spreads its new connections to each VIP over the
// live backends in turn (firewall.Services, whose doc says why the rules
// live in the client and not on the host). The table is rewritten whenever
// a backend joins or leaves, a service appears or goes, or the sandbox
// joins or leaves such a network. A backend leaves the tables before its
// interface goes, so no new connection reaches it; established connections
// keep their backend.
//
// All of this state is guarded by Controller.lbMu, which is taken after
// Sandbox.joinMu and before every Network, Endpoint and Sandbox lock.

// service is one service of a network.
type service struct {
	name       string
	vip4, vip6 netip.Addr
	members    int // endpoints made with the service and not deleted
}

// lbState is a network's part in load balancing.
type lbState struct {
	services map[string]*service  // by name
	backends map[string]*Endpoint // joined endpoints of a service, by ID
	clients  map[*Sandbox]bool    // sandboxes joined to the network
}

// sandboxLB is a sandbox's part: the networks it is joined to, and its
// services table, open while it holds services.
type sandboxLB struct {
	nets  map[*Network]bool
	table *firewall.Services
}

// WithService makes the endpoint a backend of the service name on its
// network. name is a DNS label, as endpoint names are.
//
// On a local network (bridge, macvlan, ...) the service has a virtual IP
// that load balances (see above). On a global network (overlay) it has
// none: its name answers with the addresses of its joined backends on
// every host, their order rotating from one answer to the next (DNS round
// robin, Docker's endpoint_mode dnsrr), and the endpoint's ServiceIPv4 and
// ServiceIPv6 are unset. A VIP there would need a cluster-wide address
// and every host's rules kept in step; the names already are.
func WithService(name string) EndpointOption {
	return func(o *endpointConfig) error {
		if err := validDNSName("service name", name); err != nil {
			return err
		}
		o.service = name
		return nil
	}
}

// addMember counts ep in its service. Its first endpoint makes the
// service, with a VIP per family of the network: at CreateEndpoint the next
// free addresses, at restore the recorded ones (ep.vip4, ep.vip6) reserved
// again, except in an allocator that keeps its own state. On error nothing
// is left.
func (n *Network) addMember(ctx context.Context, ep *Endpoint) error {
	if ep.service == "" || n.global { // a global network's services are names only
		return nil
	}
	c := n.ctrl
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if svc := n.lb.services[ep.service]; svc != nil {
		svc.members++
		ep.vip4, ep.vip6 = svc.vip4, svc.vip6
		return nil
	}
	var release []func() // of what is reserved so far
	for _, f := range []struct {
		fam *networkIPAM
		vip *netip.Addr
	}{{n.ipv4, &ep.vip4}, {n.ipv6, &ep.vip6}} {
		want := *f.vip
		if want.IsValid() && f.fam != nil && ipam.KeepsState(f.fam.alloc) {
			continue // a plugin holds it itself
		}
		p, err := n.requestAddress(ctx, f.fam, want)
		if err != nil {
			for _, r := range release {
				r()
			}
			return fmt.Errorf("service %q: virtual IP %v: %w", ep.service, want, err)
		}
		release = append(release, func() { n.releaseAddress(ctx, f.fam, p) })
		*f.vip = p.Addr()
	}
	svc := &service{name: ep.service, vip4: ep.vip4, vip6: ep.vip6, members: 1}
	n.addService(svc)
	c.syncClients(ctx, n, nil) // at restore, no client is entered yet: restoreLB syncs
	return nil
}

// addService registers a service and its name; c.lbMu is held.
func (n *Network) addService(svc *service) {
	if n.lb.services == nil {
		n.lb.services = map[string]*service{}
	}
	n.lb.services[svc.name] = svc
	var vips []netip.Addr
	for _, a := range []netip.Addr{svc.vip4, svc.vip6} {
		if a.IsValid() {
			vips = append(vips, a)
		}
	}
	n.names.add("service:"+svc.name, []string{strings.ToLower(svc.name)}, vips)
}

// removeMember uncounts a deleted endpoint; the last one takes the
// service, its rules and then its VIPs with it.
func (n *Network) removeMember(ctx context.Context, ep *Endpoint) {
	if ep.service == "" || n.global {
		return
	}
	c := n.ctrl
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	svc := n.lb.services[ep.service]
	if svc == nil {
		return
	}
	if svc.members--; svc.members > 0 {
		return
	}
	delete(n.lb.services, svc.name)
	n.names.remove("service:" + svc.name)
	// No client may send to the VIPs once they can be handed out again.
	c.syncClients(ctx, n, nil)
	n.releaseAddress(ctx, n.ipv4, prefixOf(svc.vip4, n.ipv4))
	n.releaseAddress(ctx, n.ipv6, prefixOf(svc.vip6, n.ipv6))
}

func prefixOf(a netip.Addr, fam *networkIPAM) netip.Prefix {
	if !a.IsValid() || fam == nil {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, fam.subnet.Bits())
}

// attachLB enters a joining endpoint in load balancing: its sandbox as a
// client of the network, the endpoint as a live backend if it has a
// service. The sandbox's own table is updated or the error returned (and
// nothing changed); other clients' failures are logged, and healed by the
// next change.
func (ep *Endpoint) attachLB(ctx context.Context, sb *Sandbox) error { return ep.setLB(ctx, sb, true) }

// detachLB takes a leaving endpoint out of load balancing, before its
// interface goes. Same error rule as attachLB.
func (ep *Endpoint) detachLB(ctx context.Context, sb *Sandbox) error { return ep.setLB(ctx, sb, false) }

// setLB is attachLB (joined) and detachLB (not joined).
func (ep *Endpoint) setLB(ctx context.Context, sb *Sandbox, joined bool) error {
	n := ep.nw
	if !n.hasDiscovery() || sb.cfg.hostNetwork {
		return nil
	}
	c := n.ctrl
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if !joined && !n.lb.clients[sb] {
		return nil
	}
	n.lb.setJoined(ep, sb, joined)
	if err := c.syncLB(ctx, ep, sb); err != nil {
		n.lb.setJoined(ep, sb, !joined)
		c.syncLBLogged(ctx, ep, sb)
		return err
	}
	return nil
}

// setJoined records a join (or a leave) of ep's sandbox sb; c.lbMu is held.
func (s *lbState) setJoined(ep *Endpoint, sb *Sandbox, joined bool) {
	if s.clients == nil {
		s.clients, s.backends = map[*Sandbox]bool{}, map[string]*Endpoint{}
	}
	if sb.lb.nets == nil {
		sb.lb.nets = map[*Network]bool{}
	}
	if joined {
		s.clients[sb], sb.lb.nets[ep.nw] = true, true
		if ep.service != "" {
			s.backends[ep.id] = ep
		}
		return
	}
	delete(s.clients, sb)
	delete(sb.lb.nets, ep.nw)
	delete(s.backends, ep.id)
}

// syncLB rewrites the tables that a join or leave of ep in sb changes: sb's
// own, returning its error, and, if ep is a backend, every other client's
// on the network.
func (c *Controller) syncLB(ctx context.Context, ep *Endpoint, sb *Sandbox) error {
	if ep.service != "" {
		c.syncClients(ctx, ep.nw, sb)
	}
	return sb.syncServices(ctx)
}

// syncLBLogged is syncLB for a rollback: errors are logged.
func (c *Controller) syncLBLogged(ctx context.Context, ep *Endpoint, sb *Sandbox) {
	if err := c.syncLB(context.WithoutCancel(ctx), ep, sb); err != nil {
		c.log.Warn("cnm: rollback: service tables", "sandbox", sb.containerID, "err", err)
	}
}

// syncClients rewrites the table of every client of n but skip, logging
// failures; c.lbMu is held.
func (c *Controller) syncClients(ctx context.Context, n *Network, skip *Sandbox) {
	for sb := range n.lb.clients {
		if sb == skip {
			continue
		}
		if err := sb.syncServices(ctx); err != nil {
			c.log.Warn("cnm: update service table", "sandbox", sb.containerID, "network", n.name, "err", err)
		}
	}
}

// syncServices makes the sandbox's table hold the services of its
// networks; a sandbox that has none keeps no table. c.lbMu is held.
func (sb *Sandbox) syncServices(ctx context.Context) error {
	svcs := sb.services()
	if len(svcs) == 0 && sb.lb.table == nil {
		return nil
	}
	if sb.lb.table == nil {
		fd, err := sb.ns.FD()
		if err != nil {
			return fmt.Errorf("service table: %w", err)
		}
		t, err := firewall.NewServices(fd, sb.ctrl.FirewallTable())
		_ = closeFD(fd)
		if err != nil {
			return err
		}
		sb.lb.table = t
	}
	if err := sb.lb.table.Set(ctx, svcs); err != nil {
		return fmt.Errorf("service table: %w", err)
	}
	if len(svcs) == 0 {
		sb.closeServices()
	}
	return nil
}

// closeServices closes the sandbox's table connection, in the background:
// a close can wait for the kernel (see firewall.Services). c.lbMu is held,
// or the sandbox is gone.
func (sb *Sandbox) closeServices() {
	t := sb.lb.table
	if t == nil {
		return
	}
	sb.lb.table = nil
	go func() { _ = t.Close() }()
}

// services returns the services of the sandbox's networks, each VIP with
// its live backends in address order; c.lbMu is held.
func (sb *Sandbox) services() []firewall.Service {
	var out []firewall.Service
	for n := range sb.lb.nets {
		for _, svc := range n.lb.services {
			var b4, b6 []netip.Addr
			for _, ep := range n.lb.backends {
				if ep.service != svc.name {
					continue
				}
				if ep.ipv4.IsValid() {
					b4 = append(b4, ep.ipv4.Addr())
				}
				if ep.ipv6.IsValid() {
					b6 = append(b6, ep.ipv6.Addr())
				}
			}
			for _, s := range []firewall.Service{{VIP: svc.vip4, Backends: b4}, {VIP: svc.vip6, Backends: b6}} {
				if s.VIP.IsValid() {
					slices.SortFunc(s.Backends, netip.Addr.Compare)
					out = append(out, s)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b firewall.Service) int { return a.VIP.Compare(b.VIP) })
	return out
}

// reattachLB undoes detachLB when a leave fails after it; errors are
// logged.
func (ep *Endpoint) reattachLB(ctx context.Context, sb *Sandbox) {
	if err := ep.attachLB(context.WithoutCancel(ctx), sb); err != nil {
		ep.nw.ctrl.log.Warn("cnm: rollback: service tables", "endpoint", ep.name, "err", err)
	}
}

// restoreLB enters the restored joins in load balancing and rewrites the
// table of every sandbox on a network with services: a crash may have
// interrupted a change.
func (c *Controller) restoreLB(ctx context.Context) error {
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	for _, sb := range c.sandboxes {
		if sb.cfg.hostNetwork {
			continue
		}
		for _, ep := range sb.endpoints {
			if ep.nw.hasDiscovery() {
				ep.nw.lb.setJoined(ep, sb, true)
			}
		}
	}
	for _, sb := range c.sandboxes {
		if err := sb.syncServices(ctx); err != nil {
			return fmt.Errorf("sandbox %q: %w", sb.containerID, err)
		}
	}
	return nil
}

// dropLB takes the endpoint of a sandbox being deleted out of load
// balancing for good: unlike detachLB, a failure to rewrite the sandbox's
// own table does not keep it a client (the table goes with the namespace,
// or stays, logged, in an adopted one).
func (ep *Endpoint) dropLB(ctx context.Context, sb *Sandbox) {
	n := ep.nw
	if !n.hasDiscovery() || sb.cfg.hostNetwork {
		return
	}
	c := n.ctrl
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if !n.lb.clients[sb] {
		return
	}
	n.lb.setJoined(ep, sb, false)
	if err := c.syncLB(ctx, ep, sb); err != nil {
		c.log.Warn("cnm: service tables", "sandbox", sb.containerID, "err", err)
		if len(sb.lb.nets) == 0 {
			sb.closeServices()
		}
	}
}
