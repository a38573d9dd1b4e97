package cnm

import (
	"context"
	"errors"
	"fmt"

	"github.com/seed53641549/cnm/drivers/bridge"
)

// Egress of overlay containers. An overlay network carries traffic between
// containers only; as Docker does with docker_gwbridge, a sandbox joined to
// an overlay network that is not internal also gets an interface on a
// local bridge network, [GatewayBridgeNetwork], which its default route
// goes through, masqueraded, to the world outside the host. That network
// is made at the first need, with inter-container traffic off (sandboxes
// cannot reach each other through it) and no service discovery. A sandbox
// gets its interface there only if none of its endpoints offers a default
// route already, and loses it when it leaves its last such overlay
// network.

// GatewayBridgeNetwork is the name of the local bridge network that gives
// overlay containers their way out.
const GatewayBridgeNetwork = "cnm_gwbridge"

// labelEgress marks the gateway bridge network. [WithLabels] refuses it:
// only cnm's own network carries it.
const labelEgress = "cnm.egress"

// isEgress reports whether n is the gateway bridge network.
func (n *Network) isEgress() bool { return n.labels[labelEgress] != "" }

// egressName is the name of a sandbox's endpoint on the gateway bridge.
func (sb *Sandbox) egressName() string {
	id := sb.id
	if len(id) > 12 {
		id = id[:12]
	}
	return "gw-" + id
}

// needsEgress reports whether one of the sandbox's endpoints is on an
// overlay network with a way out.
func (sb *Sandbox) needsEgress() bool {
	for _, ep := range sb.Endpoints() {
		if ep.nw.global && !ep.nw.internal {
			return true
		}
	}
	return false
}

// egressEndpoint returns the sandbox's endpoint on the gateway bridge, nil
// if it has none.
func (sb *Sandbox) egressEndpoint() *Endpoint {
	for _, ep := range sb.Endpoints() {
		if ep.nw.isEgress() {
			return ep
		}
	}
	return nil
}

// attachEgress gives the sandbox its interface on the gateway bridge after
// ep joined it, if ep's network is an overlay network with a way out and no
// endpoint of the sandbox offers a default route. The caller holds
// sb.joinMu.
func (sb *Sandbox) attachEgress(ctx context.Context, ep *Endpoint) error {
	if !ep.nw.global || ep.nw.internal {
		return nil
	}
	return sb.updateEgress(ctx)
}

// offersGateway reports whether an endpoint of the sandbox, other than
// its gateway bridge one, offers a default route.
func (sb *Sandbox) offersGateway() bool {
	for _, o := range sb.Endpoints() {
		if o.nw.isEgress() {
			continue
		}
		o.mu.Lock()
		offers := o.gw4.IsValid() || o.gw6.IsValid()
		o.mu.Unlock()
		if offers {
			return true
		}
	}
	return false
}

// updateEgress gives the sandbox its gateway bridge interface when an
// overlay endpoint needs a way out that no other endpoint offers, and
// takes it away when none does. The caller holds sb.joinMu.
func (sb *Sandbox) updateEgress(ctx context.Context) error {
	want := sb.needsEgress() && !sb.offersGateway()
	gep := sb.egressEndpoint()
	switch {
	case want && gep == nil:
		c := sb.ctrl
		n, err := c.egressNetwork(ctx)
		if err != nil {
			return fmt.Errorf("gateway bridge network: %w", err)
		}
		// One left by a removal that failed half way is used again.
		gep, err := n.EndpointByName(sb.egressName())
		made := false
		if err != nil {
			if gep, err = n.createEndpoint(ctx, sb.egressName(), endpointConfig{}); err != nil {
				return fmt.Errorf("gateway bridge endpoint: %w", err)
			}
			made = true
		}
		if err := gep.join(ctx, sb, joinConfig{}); err != nil {
			err = fmt.Errorf("gateway bridge endpoint: %w", err)
			if made {
				err = errors.Join(err, gep.delete(context.WithoutCancel(ctx)))
			}
			return err
		}
	case !want && gep != nil:
		ctx = context.WithoutCancel(ctx) // the leave that called it is done
		err := gep.leave(ctx, sb)
		if err == nil {
			err = gep.delete(ctx)
		}
		if err != nil {
			return fmt.Errorf("remove the gateway bridge endpoint: %w", err)
		}
	}
	return nil
}

// detachEgress updates the sandbox's gateway bridge interface after a
// leave: gone when no overlay endpoint needs it, made when the leave took
// the only other way out. Failures are logged: the leave is done.
func (sb *Sandbox) detachEgress(ctx context.Context) {
	if err := sb.updateEgress(ctx); err != nil {
		sb.ctrl.log.Warn("cnm: update the gateway bridge endpoint after a leave", "sandbox", sb.containerID, "err", err)
	}
}

// egressNetwork returns the gateway bridge network, making it if needed.
func (c *Controller) egressNetwork(ctx context.Context) (*Network, error) {
	c.egressMu.Lock()
	defer c.egressMu.Unlock()
	if n, err := c.NetworkByName(GatewayBridgeNetwork); err == nil {
		if !n.isEgress() {
			return nil, fmt.Errorf("%w: network name %q is taken by a network cnm did not make for egress", ErrExists, GatewayBridgeNetwork)
		}
		return n, nil
	}
	drv, err := c.drivers.Driver(bridge.NetworkType)
	if err != nil {
		return nil, err
	}
	return c.newNetwork(ctx, drv, GatewayBridgeNetwork, networkConfig{
		labels:     map[string]string{labelEgress: "true"},
		driverOpts: map[string]string{bridge.OptionICC: "false"},
	})
}
