package cnm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/uuid"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/mac"
	"github.com/seed53641549/cnm/ipam"
)

// Endpoint attaches one sandbox to one network. Its addresses and MAC are
// reserved when it is made and kept across Leave and a later Join, until
// Delete. It is safe for concurrent use.
type Endpoint struct {
	nw      *Network
	id      string
	name    string
	mac     net.HardwareAddr
	ipv4    netip.Prefix
	ipv6    netip.Prefix
	aliases []string
	ports   []PortMapping
	service string     // WithService; empty if none
	vip4    netip.Addr // the service's virtual IPs
	vip6    netip.Addr

	// mu guards the fields below.
	mu       sync.Mutex
	busy     bool // a Join, Leave or Delete is in flight
	deleted  bool
	external bool // external connectivity programmed
	joinState
	// Interfaces of earlier joins still being removed (reaper.go): while
	// reaping > 0, reaped is open and the addresses stay reserved.
	reaping int
	reaped  chan struct{}
	// deleteWhenReaped: Delete came while reaping; the last job finishes it.
	deleteWhenReaped bool
	// stuck: a background removal failed, so an interface may live on; the
	// addresses stay reserved until the next New.
	stuck bool
}

// joinState is what an endpoint has while joined; its zero value is "not
// joined", so leaving is `ep.joinState = joinState{}`. sandbox is set last,
// when the join commits.
type joinState struct {
	sandbox    *Sandbox
	ifName     string           // inside the sandbox
	ifIndex    int              // inside the sandbox; 0 without interface
	ifMAC      net.HardwareAddr // the interface's MAC, if not the endpoint's own (ipvlan)
	gw4, gw6   netip.Addr       // next hops this endpoint offers
	gwPriority int
	bindings   []PortMapping // published ports as bound, one per address family
}

// EndpointInfo describes an endpoint. Interface fields are zero while the
// endpoint is not joined.
type EndpointInfo struct {
	// InterfaceName inside the sandbox ("eth0"); empty while not joined.
	InterfaceName string
	// MAC is the interface's MAC while joined, else the one reserved for
	// the endpoint. The two differ only for links that carry their parent's
	// address (ipvlan, macvlan passthru).
	MAC net.HardwareAddr
	// IPv4 and IPv6 are the addresses with the subnet's prefix length; zero
	// for a family the network does not have.
	IPv4 netip.Prefix
	IPv6 netip.Prefix
	// Gateway and GatewayIPv6 are the next hops this endpoint offers while
	// joined (zero on internal networks), whether or not the sandbox chose
	// this endpoint for its default route.
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	// SandboxID is the sandbox it is joined to, empty if none.
	SandboxID string
	Aliases   []string
	// Service is the service the endpoint is a backend of ([WithService]),
	// and ServiceIPv4 and ServiceIPv6 are that service's virtual IPs on the
	// network (zero for a family the network does not have, and on a
	// global network, where services have none).
	Service     string
	ServiceIPv4 netip.Addr
	ServiceIPv6 netip.Addr
	// PortMappings are the published ports: while joined, as bound (one
	// per address family, the host port chosen); otherwise as asked for.
	PortMappings []PortMapping
}

// ID returns the endpoint's ID, a UUID.
func (ep *Endpoint) ID() string { return ep.id }

// Name returns the endpoint's name, unique within its network.
func (ep *Endpoint) Name() string { return ep.name }

// Network returns the endpoint's network.
func (ep *Endpoint) Network() *Network { return ep.nw }

// String returns the endpoint's name.
func (ep *Endpoint) String() string { return ep.name }

// Info returns a snapshot of the endpoint's addresses and interface.
func (ep *Endpoint) Info() EndpointInfo {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	info := EndpointInfo{
		InterfaceName: ep.ifName,
		MAC:           slices.Clone(ep.mac),
		IPv4:          ep.ipv4,
		IPv6:          ep.ipv6,
		Aliases:       slices.Clone(ep.aliases),
		Service:       ep.service,
		ServiceIPv4:   ep.vip4,
		ServiceIPv6:   ep.vip6,
		PortMappings:  slices.Clone(ep.ports),
	}
	if ep.sandbox != nil {
		info.SandboxID = ep.sandbox.id
		info.Gateway, info.GatewayIPv6 = ep.gw4, ep.gw6
		if ep.bindings != nil {
			info.PortMappings = slices.Clone(ep.bindings)
		}
		if ep.ifMAC != nil {
			info.MAC = slices.Clone(ep.ifMAC)
		}
	}
	return info
}

// CreateEndpoint makes an endpoint on the network named name: it reserves its
// addresses (the next free ones, or those asked for with [WithIPv4Address]
// and [WithIPv6Address]) and its MAC. No kernel object is made until Join.
// On error nothing stays reserved.
func (n *Network) CreateEndpoint(ctx context.Context, name string, opts ...EndpointOption) (_ *Endpoint, retErr error) {
	c := n.ctrl
	defer func() {
		if retErr != nil {
			c.logOp("create endpoint", retErr, "network", n.id, "name", name)
		}
	}()
	if err := validDNSName("endpoint name", name); err != nil {
		return nil, err
	}
	var cfg endpointConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", name, err)
		}
	}
	if n.driver.Capability().NoInterface && cfg.mac != nil {
		return nil, fmt.Errorf("%w: endpoint %q: %s network %q gives endpoints no interface: no mac address",
			ErrInvalid, name, n.driver.Type(), n.name)
	}
	if err := n.checkPorts(cfg.ports); err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", name, err)
	}
	if err := n.checkAddress("ipv4", cfg.ipv4, n.ipv4); err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", name, err)
	}
	if err := n.checkAddress("ipv6", cfg.ipv6, n.ipv6); err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", name, err)
	}
	end, err := c.begin()
	if err != nil {
		return nil, err
	}
	defer end()
	return n.createEndpoint(ctx, name, cfg)
}

// createEndpoint does CreateEndpoint's work, once its input is checked;
// the caller has begun an operation.
func (n *Network) createEndpoint(ctx context.Context, name string, cfg endpointConfig) (_ *Endpoint, retErr error) {
	c := n.ctrl
	n.mu.Lock()
	switch {
	case n.deleting:
		n.mu.Unlock()
		return nil, fmt.Errorf("%w: network %q is being deleted", ErrNotFound, n.name)
	case n.epNames[name]:
		n.mu.Unlock()
		return nil, fmt.Errorf("%w: endpoint name %q on network %q", ErrExists, name, n.name)
	}
	n.epNames[name] = true
	n.mu.Unlock()
	defer func() {
		if retErr != nil {
			n.mu.Lock()
			delete(n.epNames, name)
			n.mu.Unlock()
			if n.global {
				c.global.dropIfOrphan(n) // deleted by another host meanwhile
			}
		}
	}()

	ep := &Endpoint{nw: n, id: uuid.NewString(), name: name, mac: cfg.mac, aliases: cfg.aliases, ports: cfg.ports, service: cfg.service}
	// If a driver rollback fails, its kernel objects may still hold the
	// addresses: then they stay reserved rather than be handed out twice.
	keepAddresses := false
	if ep.mac == nil {
		ep.mac = mac.Random()
	}
	release := func(fam *networkIPAM, a *netip.Prefix) func(context.Context) error {
		return func(ctx context.Context) error {
			if !keepAddresses {
				n.releaseAddress(ctx, fam, *a)
			}
			return nil
		}
	}
	err := c.run(ctx,
		step{name: stepEndpointIPv4,
			do: func(ctx context.Context) (err error) {
				if ep.ipv4, err = n.requestAddress(ctx, n.ipv4, cfg.ipv4); err != nil {
					return fmt.Errorf("ipv4 address: %w", err)
				}
				if n.global && cfg.mac == nil && ep.ipv4.IsValid() {
					// As Docker does: an address handed out again comes
					// with the same MAC, so that the neighbour caches of
					// containers on other hosts stay right.
					ep.mac = mac.FromIPv4(ep.ipv4.Addr())
				}
				return nil
			},
			undo: release(n.ipv4, &ep.ipv4)},
		step{name: stepEndpointIPv6,
			do: func(ctx context.Context) (err error) {
				if ep.ipv6, err = n.requestAddress(ctx, n.ipv6, cfg.ipv6); err != nil {
					return fmt.Errorf("ipv6 address: %w", err)
				}
				return nil
			},
			undo: release(n.ipv6, &ep.ipv6)},
		step{name: stepEndpointService,
			do: func(ctx context.Context) error { return n.addMember(ctx, ep) },
			undo: func(ctx context.Context) error {
				n.removeMember(ctx, ep)
				return nil
			}},
		step{name: stepEndpointDriver,
			do: func(ctx context.Context) error {
				if p, ok := n.driver.(driverapi.EndpointPreparer); ok {
					return p.CreateEndpoint(ctx, ep.driverRequest())
				}
				return nil
			},
			undo: func(ctx context.Context) error {
				if err := ep.removeFromDriver(ctx); err != nil {
					keepAddresses = true
					return fmt.Errorf("delete endpoint %q in driver; its addresses stay reserved: %w", name, err)
				}
				return nil
			}},
		step{name: stepEndpointGlobal,
			do: func(ctx context.Context) error {
				if !n.global {
					return nil
				}
				return c.global.publishEndpoint(ctx, ep)
			},
			undo: func(ctx context.Context) error {
				if !n.global {
					return nil
				}
				if err := c.global.withdrawEndpoint(ctx, ep); err != nil {
					c.global.postWithdraw(ep)
				}
				return nil
			}},
		step{name: stepEndpointCommit, do: func(ctx context.Context) error {
			return c.saveRecord(ctx, endpointKey(n.id, ep.id), ep.record(nil))
		}},
	)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", name, err)
	}
	n.mu.Lock()
	n.endpoints[ep.id] = ep
	n.mu.Unlock()
	if n.global {
		c.global.followIfUsed(n)
	}
	c.emit(Event{Type: EventEndpointCreated, NetworkID: n.id, EndpointID: ep.id, Detail: ep.name})
	return ep, nil
}

// checkAddress validates a preferred address against the network, before
// anything is reserved.
func (n *Network) checkAddress(field string, want netip.Addr, fam *networkIPAM) error {
	if !want.IsValid() {
		return nil
	}
	if fam == nil || fam.null {
		return fmt.Errorf("%w: %s address %s: network %q has no %s addressing", ErrInvalid, field, want, n.name, field)
	}
	if !fam.subnet.Contains(want) {
		return fmt.Errorf("%w: %s address %s is outside subnet %s", ErrInvalid, field, want, fam.subnet)
	}
	return nil
}

// requestAddress reserves want, or the next free address when want is zero.
// A network without the family gets the zero prefix.
func (n *Network) requestAddress(ctx context.Context, fam *networkIPAM, want netip.Addr) (netip.Prefix, error) {
	if fam == nil || fam.null {
		return netip.Prefix{}, nil
	}
	a, err := fam.alloc.RequestAddress(ctx, fam.poolID, ipam.AddressRequest{Preferred: want})
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, fam.subnet.Bits()), nil
}

func (n *Network) releaseAddress(ctx context.Context, fam *networkIPAM, a netip.Prefix) {
	if fam == nil || fam.null || !a.IsValid() {
		return
	}
	if err := fam.alloc.ReleaseAddress(context.WithoutCancel(ctx), fam.poolID, a.Addr()); err != nil {
		n.ctrl.log.Warn("cnm: release address", "address", a, "err", err)
	}
}

// Delete removes an endpoint that is not joined and releases its addresses.
// A joined endpoint is not deleted: the error wraps [ErrInUse]. If the
// interface of its last join is still being removed in the background (see
// [Controller.Settle]), Delete returns at once and the addresses are
// released once that interface is gone.
func (ep *Endpoint) Delete(ctx context.Context) (retErr error) {
	defer func() {
		if retErr != nil {
			ep.nw.ctrl.logOp("delete endpoint", retErr, "network", ep.nw.id, "endpoint", ep.id)
		}
	}()
	end, err := ep.nw.ctrl.begin()
	if err != nil {
		return err
	}
	defer end()
	return ep.delete(ctx)
}

// delete does Delete's work; the caller has begun an operation.
func (ep *Endpoint) delete(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx) // a delete, once begun, is finished
	ep.mu.Lock()
	switch {
	case ep.deleted:
		ep.mu.Unlock()
		return fmt.Errorf("%w: endpoint %q was deleted", ErrNotFound, ep.name)
	case ep.busy:
		ep.mu.Unlock()
		return fmt.Errorf("%w: endpoint %q: a join or leave is in progress", ErrInUse, ep.name)
	case ep.sandbox != nil:
		sb := ep.sandbox.containerID
		ep.mu.Unlock()
		return fmt.Errorf("%w: endpoint %q is joined to sandbox %q: leave first", ErrInUse, ep.name, sb)
	}
	ep.busy = true
	ep.mu.Unlock()
	defer func() {
		ep.mu.Lock()
		ep.busy = false
		ep.mu.Unlock()
	}()
	if ep.nw.global {
		// A global operation: the other hosts forget it first.
		if err := ep.nw.ctrl.global.withdrawEndpoint(ctx, ep); err != nil {
			return fmt.Errorf("delete endpoint %q: %w", ep.name, err)
		}
	}
	if ep.isStuck() {
		// A failed removal of its interface: try it again now. If it fails
		// again, the deletion waits for a later retry (below).
		_ = ep.nw.ctrl.retryStuck(ctx, func(e *Endpoint) bool { return e == ep })
	}
	ep.mu.Lock()
	pending := ep.reaping > 0 || ep.stuck
	ep.mu.Unlock()

	// The endpoint stays if what follows fails: so does its record in
	// the peer table, which other hosts' network deletions check.
	republish := func() {
		if ep.nw.global {
			ep.nw.ctrl.global.postEndpoint(ep, nil)
		}
	}
	if !pending {
		// The common case: no interface exists, nothing waits.
		if err := ep.finishDelete(ctx); err != nil {
			republish()
			return err
		}
		ep.forget(true)
		return nil
	}
	// An interface of an earlier join may still exist: mark the record,
	// so a restart finishes the deletion, and leave the rest to the job.
	rec := ep.record(nil)
	rec.Deleting = true
	if err := ep.nw.ctrl.saveRecord(ctx, endpointKey(ep.nw.id, ep.id), rec); err != nil {
		republish()
		return fmt.Errorf("delete endpoint %q: %w", ep.name, err)
	}
	ep.mu.Lock()
	ep.deleteWhenReaped = true
	finishNow := ep.reaping == 0 && !ep.stuck
	ep.mu.Unlock()
	ep.forget(true)
	if finishNow { // the job ended between the check and the mark
		return ep.finishDelete(ctx)
	}
	return nil
}

// driverRequest describes the endpoint to a driver that prepares endpoints.
func (ep *Endpoint) driverRequest() driverapi.EndpointRequest {
	return driverapi.EndpointRequest{NetworkID: ep.nw.id, EndpointID: ep.id, MAC: ep.mac, IPv4: ep.ipv4, IPv6: ep.ipv6}
}

// removeFromDriver deletes the endpoint in a driver that prepares endpoints.
func (ep *Endpoint) removeFromDriver(ctx context.Context) error {
	n := ep.nw
	p, ok := n.driver.(driverapi.EndpointPreparer)
	if !ok {
		return nil
	}
	if err := p.DeleteEndpoint(ctx, n.id, ep.id); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete endpoint %q: %w", ep.name, err)
	}
	return nil
}

// forget drops a deleted endpoint from its network: its name is free at
// once, and so is its service's VIP if it was the service's last endpoint.
// Its addresses are released separately (finishDelete), once no interface
// holds them. On a global network its record leaves the peer table in the
// background, unless withdrawn says the caller removed it already.
func (ep *Endpoint) forget(withdrawn bool) {
	n := ep.nw
	n.ctrl.emit(Event{Type: EventEndpointDeleted, NetworkID: n.id, EndpointID: ep.id, Detail: ep.name})
	n.mu.Lock()
	delete(n.endpoints, ep.id)
	delete(n.epNames, ep.name)
	n.mu.Unlock()
	n.removeMember(context.Background(), ep)
	if n.global {
		if !withdrawn {
			n.ctrl.global.postWithdraw(ep)
		}
		n.ctrl.global.followIfUsed(n)
		n.ctrl.global.dropIfOrphan(n)
	}
	ep.mu.Lock()
	ep.deleted = true
	ep.mu.Unlock()
}
