package cnm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// Join attaches the endpoint to the sandbox. The driver makes the interface
// directly inside the sandbox's namespace, named eth0, eth1, ... (the lowest
// free number); cnm gives it the endpoint's addresses and MAC, brings it up,
// installs the driver's routes and, if this endpoint wins the gateway choice
// (see [WithGatewayPriority]), the sandbox's default route. On error nothing
// of the join is left.
//
// A sandbox holds at most one endpoint per network; an endpoint is joined to
// at most one sandbox.
func (ep *Endpoint) Join(ctx context.Context, sb *Sandbox, opts ...JoinOption) error {
	var cfg joinConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return fmt.Errorf("join endpoint %q: %w", ep.name, err)
		}
	}
	n := ep.nw
	c := n.ctrl
	if sb == nil || sb.ctrl != c {
		return fmt.Errorf("%w: join endpoint %q: sandbox belongs to another controller", ErrInvalid, ep.name)
	}
	end, err := c.begin()
	if err != nil {
		return err
	}
	defer end()
	sb.joinMu.Lock()
	defer sb.joinMu.Unlock()
	err = ep.join(ctx, sb, cfg)
	if err == nil {
		if err = sb.attachEgress(ctx, ep); err != nil {
			// All or nothing: the join goes too.
			if lerr := ep.leave(context.WithoutCancel(ctx), sb); lerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back the join: %w", lerr))
			}
		}
	}
	if err != nil {
		c.logOp("join", err, "network", n.id, "endpoint", ep.id, "sandbox", sb.id)
		return fmt.Errorf("join endpoint %q to sandbox %q: %w", ep.name, sb.containerID, err)
	}
	return nil
}

// join does Join's work; the caller holds sb.joinMu.
func (ep *Endpoint) join(ctx context.Context, sb *Sandbox, cfg joinConfig) error {
	n := ep.nw
	c := n.ctrl
	noIf := n.driver.Capability().NoInterface
	if err := sb.checkJoin(ep, noIf); err != nil {
		return err
	}
	if err := ep.claim(); err != nil {
		return err
	}
	joined := false
	defer func() { ep.release(joined) }()
	// The driver serves one interface per endpoint: one left a moment ago
	// must be gone first (reaper.go).
	if err := ep.waitReaped(ctx); err != nil {
		return err
	}
	if ep.isStuck() {
		if err := c.retryStuck(ctx, func(e *Endpoint) bool { return e == ep }); err != nil {
			return fmt.Errorf("%w: the interface of its last join could not be removed: %w", ErrInUse, err)
		}
	}

	ifName := ""
	var err error
	if !noIf {
		if ifName, err = sb.nextIfName(ctx); err != nil {
			return err
		}
	}
	var (
		resp    driverapi.JoinResponse
		ifIndex int
		ifMAC   net.HardwareAddr
		others  = sb.Endpoints()
		with    = append(slices.Clone(others), ep)
		// startedDNS: this join started the sandbox's DNS server.
		startedDNS bool
	)
	err = c.run(ctx,
		step{name: stepJoinDriver,
			do: func(ctx context.Context) (err error) {
				resp, err = n.driver.Join(ctx, driverapi.JoinRequest{
					NetworkID: n.id, EndpointID: ep.id, Sandbox: sb.ns, InterfaceName: ifName,
					MAC: ep.mac, IPv4: ep.ipv4, IPv6: ep.ipv6,
				})
				return err
			},
			// The interface, its addresses and routes go with it.
			undo: func(ctx context.Context) error {
				return n.driver.Leave(ctx, driverapi.LeaveRequest{NetworkID: n.id, EndpointID: ep.id, Sandbox: sb.ns})
			}},
		step{name: stepJoinInterface, do: func(ctx context.Context) (err error) {
			if !noIf {
				ifIndex, ifMAC, err = sb.configureInterface(ctx, ep, ifName, resp.SrcName)
			}
			return err
		}},
		step{name: stepJoinRoutes, do: func(ctx context.Context) error {
			for _, r := range resp.StaticRoutes {
				if noIf {
					break
				}
				if err := sb.ns.AddRoute(ctx, osl.Route{Dst: r.Destination, Gateway: r.NextHop, LinkIndex: ifIndex}); err != nil {
					return err
				}
			}
			return nil
		}},
		step{name: stepJoinGateway,
			do: func(ctx context.Context) error {
				// From here on the endpoint takes part in the sandbox's choices.
				ep.mu.Lock()
				ep.joinState = joinState{ifName: ifName, ifIndex: ifIndex, ifMAC: ifMAC, gw4: resp.Gateway, gw6: resp.GatewayIPv6, gwPriority: cfg.gatewayPriority}
				ep.mu.Unlock()
				if err := sb.updateGateways(ctx, with, nil); err != nil {
					// One family's route may have moved: put both back.
					if rerr := sb.updateGateways(context.WithoutCancel(ctx), others, nil); rerr != nil {
						c.log.Warn("cnm: rollback: restore default routes", "sandbox", sb.containerID, "err", rerr)
					}
					return err
				}
				return nil
			},
			undo: func(ctx context.Context) error { return sb.updateGateways(ctx, others, nil) }},
		step{name: stepJoinHosts,
			do:   func(context.Context) error { return sb.writeHosts(with) },
			undo: func(context.Context) error { return sb.writeHosts(others) }},
		step{name: stepJoinExternal,
			do:   ep.programExternal,
			undo: ep.revokeExternal},
		step{name: stepJoinServices,
			do:   func(ctx context.Context) error { return ep.attachLB(ctx, sb) },
			undo: func(ctx context.Context) error { return ep.detachLB(ctx, sb) }},
		step{name: stepJoinDNS,
			do: func(context.Context) (err error) {
				startedDNS, err = sb.updateResolver(with)
				return err
			},
			undo: func(context.Context) error {
				if startedDNS {
					sb.stopResolver()
					return sb.writeResolvConf()
				}
				_, err := sb.updateResolver(others)
				return err
			}},
		step{name: stepJoinCommit, do: func(ctx context.Context) error {
			return c.saveRecord(ctx, endpointKey(n.id, ep.id), ep.record(sb))
		}},
	)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	sb.endpoints = append(sb.endpoints, ep)
	sb.mu.Unlock()
	ep.mu.Lock()
	ep.sandbox = sb
	ep.mu.Unlock()
	ep.publishNames(sb)
	if n.global {
		// Other hosts learn of the join from the peer table. The write is
		// not on the join's path: it lands in the background, at once or,
		// while etcd is down, once it is back (the join works on this
		// host meanwhile).
		c.global.postEndpoint(ep, sb)
	}
	joined = true
	c.emit(Event{Type: EventJoined, NetworkID: n.id, EndpointID: ep.id, SandboxID: sb.id, Detail: ifName})
	return nil
}

// checkJoin refuses joins to deleted sandboxes, a second endpoint of one
// network, and mixing host-network sandboxes with interface endpoints.
func (sb *Sandbox) checkJoin(ep *Endpoint, noIf bool) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.deleted {
		return fmt.Errorf("%w: sandbox %q was deleted", ErrNotFound, sb.containerID)
	}
	for _, other := range sb.endpoints {
		if other == ep {
			return fmt.Errorf("%w: endpoint %q is already joined to this sandbox", ErrExists, ep.name)
		}
		if other.nw == ep.nw {
			return fmt.Errorf("%w: sandbox already has endpoint %q on network %q", ErrExists, other.name, ep.nw.name)
		}
	}
	if sb.cfg.hostNetwork && !noIf {
		return fmt.Errorf("%w: sandbox shares the host namespace: only endpoints without interface (host, null) can join it, not %s network %q",
			ErrInvalid, ep.nw.driver.Type(), ep.nw.name)
	}
	return nil
}

// claim marks the endpoint busy for a join; release ends that.
func (ep *Endpoint) claim() error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	switch {
	case ep.deleted:
		return fmt.Errorf("%w: endpoint %q was deleted", ErrNotFound, ep.name)
	case ep.sandbox != nil:
		return fmt.Errorf("%w: endpoint %q is already joined to sandbox %q", ErrExists, ep.name, ep.sandbox.containerID)
	case ep.busy:
		return fmt.Errorf("%w: endpoint %q: another join, leave or delete is in progress", ErrInUse, ep.name)
	}
	ep.busy = true
	return nil
}

func (ep *Endpoint) release(joined bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.busy = false
	if !joined {
		ep.joinState = joinState{}
	}
}

// nextIfName returns the lowest ethN not used by a joined endpoint. In a
// namespace cnm did not make, the links already there count as used too.
func (sb *Sandbox) nextIfName(ctx context.Context) (string, error) {
	used := map[string]bool{}
	if !sb.owned {
		links, err := sb.ns.Links(ctx)
		if err != nil {
			return "", err
		}
		for _, l := range links {
			used[l.Name] = true
		}
	}
	sb.mu.Lock()
	for _, ep := range sb.endpoints {
		ep.mu.Lock()
		used[ep.ifName] = true
		ep.mu.Unlock()
	}
	sb.mu.Unlock()
	for i := 0; ; i++ {
		if name := "eth" + strconv.Itoa(i); !used[name] {
			return name, nil
		}
	}
}

// configureInterface moves in the driver's link if it made one in the host
// namespace, then gives the interface its addresses and brings it up. It
// returns the interface's index and MAC (which is not the endpoint's own for
// links that share their parent's, such as ipvlan or macvlan passthru).
func (sb *Sandbox) configureInterface(ctx context.Context, ep *Endpoint, ifName, srcName string) (int, net.HardwareAddr, error) {
	if srcName != "" {
		if err := sb.ctrl.hostNS.MoveLink(ctx, srcName, sb.ns, ifName); err != nil {
			return 0, nil, err
		}
	}
	link, err := sb.ns.LinkByName(ctx, ifName)
	if err != nil {
		return 0, nil, err
	}
	for _, a := range []netip.Prefix{ep.ipv4, ep.ipv6} {
		if a.IsValid() {
			if err := sb.ns.AddAddress(ctx, link.Index, a); err != nil {
				return 0, nil, err
			}
		}
	}
	// No IPv6 link-local address on an interface without IPv6: see osl.LinkUp.
	if err := sb.ns.LinkUp(ctx, link.Index, ep.ipv6.IsValid()); err != nil {
		return 0, nil, err
	}
	return link.Index, link.MAC, nil
}

// Leave detaches the endpoint from the sandbox. Its default route, if it
// held one, moves to the next best endpoint first, so the sandbox is never
// without one while another endpoint offers it. The interface is taken out
// of use at once (down, and renamed, so its name is free for the next
// Join); the kernel's deletion of it, which takes 20-30 ms, runs in the
// background (see [Controller.Settle]). The endpoint keeps its addresses
// for a later Join.
func (ep *Endpoint) Leave(ctx context.Context, sb *Sandbox) (retErr error) {
	n := ep.nw
	c := n.ctrl
	defer func() {
		if retErr != nil && sb != nil {
			c.logOp("leave", retErr, "network", n.id, "endpoint", ep.id, "sandbox", sb.id)
		}
	}()
	if sb == nil || sb.ctrl != c {
		return fmt.Errorf("%w: leave endpoint %q: sandbox belongs to another controller", ErrInvalid, ep.name)
	}
	end, err := c.begin()
	if err != nil {
		return err
	}
	defer end()
	sb.joinMu.Lock()
	defer sb.joinMu.Unlock()
	if err := ep.leave(ctx, sb); err != nil {
		return err
	}
	sb.detachEgress(ctx)
	return nil
}

// leave does Leave's work; the caller holds sb.joinMu.
func (ep *Endpoint) leave(ctx context.Context, sb *Sandbox) error {
	n := ep.nw
	c := n.ctrl
	ep.mu.Lock()
	switch {
	case ep.sandbox != sb:
		ep.mu.Unlock()
		return fmt.Errorf("%w: endpoint %q is not joined to sandbox %q", ErrNotFound, ep.name, sb.containerID)
	case ep.busy:
		ep.mu.Unlock()
		return fmt.Errorf("%w: endpoint %q: another operation is in progress", ErrInUse, ep.name)
	}
	ep.busy = true
	ifName, ifIndex := ep.ifName, ep.ifIndex
	ep.mu.Unlock()
	left := false
	defer func() {
		ep.mu.Lock()
		ep.busy = false
		if left {
			ep.joinState = joinState{}
		}
		ep.mu.Unlock()
	}()

	all := sb.Endpoints()
	rest := slices.DeleteFunc(slices.Clone(all), func(e *Endpoint) bool { return e == ep })

	// No new connection reaches a leaving backend.
	if err := ep.detachLB(ctx, sb); err != nil {
		return fmt.Errorf("leave endpoint %q: %w", ep.name, err)
	}
	if err := ep.revokeExternal(ctx); err != nil {
		ep.reattachLB(ctx, sb)
		return fmt.Errorf("leave endpoint %q: %w", ep.name, err)
	}
	if err := sb.updateGateways(ctx, rest, ep); err != nil {
		ep.reattachLB(ctx, sb)
		if rerr := ep.programExternal(context.WithoutCancel(ctx)); rerr != nil {
			c.log.Warn("cnm: rollback: republish ports", "endpoint", ep.name, "err", rerr)
		}
		return fmt.Errorf("leave endpoint %q: %w", ep.name, err)
	}
	req := driverapi.LeaveRequest{NetworkID: n.id, EndpointID: ep.id, Sandbox: sb.ns}
	err := c.step(ctx, stepLeave)
	if err == nil && ifName != "" {
		req.InterfaceName = retiredName()
		err = sb.ns.RetireLink(ctx, ifIndex, req.InterfaceName)
		if errors.Is(err, osl.ErrLinkNotFound) {
			err, req.InterfaceName = nil, "" // someone deleted it already
		}
	}
	if err != nil {
		rctx := context.WithoutCancel(ctx)
		if rerr := sb.updateGateways(rctx, all, nil); rerr != nil {
			c.log.Warn("cnm: rollback: restore default routes", "sandbox", sb.containerID, "err", rerr)
		}
		if rerr := ep.programExternal(rctx); rerr != nil {
			c.log.Warn("cnm: rollback: republish ports", "endpoint", ep.name, "err", rerr)
		}
		ep.reattachLB(rctx, sb)
		return fmt.Errorf("leave endpoint %q: %w", ep.name, err)
	}
	// From here on the leave is done: nothing fails it any more.
	c.crashPoint(stepLeaveDriver)
	if err := sb.writeHosts(rest); err != nil {
		c.log.Warn("cnm: rewrite hosts file", "sandbox", sb.containerID, "err", err)
	}
	ep.withdrawNames()
	if _, err := sb.updateResolver(rest); err != nil {
		c.log.Warn("cnm: update the embedded DNS server", "sandbox", sb.containerID, "err", err)
	}
	if err := c.saveRecord(ctx, endpointKey(n.id, ep.id), ep.record(nil)); err != nil {
		// The interface is retired; the next New sees that and finishes the leave.
		c.log.Warn("cnm: record leave", "endpoint", ep.name, "err", err)
	}
	sb.drop(ep)
	left = true
	if n.global {
		c.global.postEndpoint(ep, nil)
	}
	c.emit(Event{Type: EventLeft, NetworkID: n.id, EndpointID: ep.id, SandboxID: sb.id})
	if ifName == "" {
		// No interface: the driver only forgets the join.
		if err := n.driver.Leave(ctx, req); err != nil {
			c.log.Warn("cnm: leave in driver", "endpoint", ep.name, "err", err)
		}
		return nil
	}
	var hold *Sandbox
	if !n.driver.Capability().GoneWithSandbox {
		hold = sb // the driver deletes the interface inside the sandbox
	} else {
		req.Sandbox = nil
	}
	ep.reap(req, hold)
	return nil
}
