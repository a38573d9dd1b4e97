package cnm

import (
	"context"
	"net/netip"
	"sort"

	"github.com/seed53641549/cnm/osl"
)

var (
	defaultV4 = netip.MustParsePrefix("0.0.0.0/0")
	defaultV6 = netip.MustParsePrefix("::/0")
)

// gatewayCandidate is an endpoint's offer of a default route.
type gatewayCandidate struct {
	ep       *Endpoint
	gw       netip.Addr
	ifIndex  int
	priority int
	internal bool
	network  string
}

// bestGateway picks the endpoint that holds a family's default route:
// highest priority, then non-internal before internal, then network name.
func bestGateway(eps []*Endpoint, v6 bool) (gatewayCandidate, bool) {
	var cands []gatewayCandidate
	for _, ep := range eps {
		ep.mu.Lock()
		gw := ep.gw4
		if v6 {
			gw = ep.gw6
		}
		c := gatewayCandidate{ep: ep, gw: gw, ifIndex: ep.ifIndex, priority: ep.gwPriority, internal: ep.nw.internal, network: ep.nw.name}
		ep.mu.Unlock()
		if c.gw.IsValid() && c.ifIndex > 0 {
			cands = append(cands, c)
		}
	}
	if len(cands) == 0 {
		return gatewayCandidate{}, false
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.priority != b.priority {
			return a.priority > b.priority
		}
		if a.internal != b.internal {
			return !a.internal
		}
		return a.network < b.network
	})
	return cands[0], true
}

// updateGateways makes the sandbox's default routes match the best choice
// among eps, one family at a time. A moving route is replaced atomically
// (RTM_NEWROUTE with NLM_F_REPLACE), so there is no moment without one.
// A route of the endpoint leaving (nil if none) that no other endpoint takes
// over is not deleted: it goes with that endpoint's interface.
// The caller holds sb.joinMu.
func (sb *Sandbox) updateGateways(ctx context.Context, eps []*Endpoint, leaving *Endpoint) error {
	for _, fam := range []struct {
		v6   bool
		dst  netip.Prefix
		slot **Endpoint // guarded by sb.mu
	}{{false, defaultV4, &sb.gw4}, {true, defaultV6, &sb.gw6}} {
		if fam.v6 {
			if err := sb.ctrl.step(ctx, stepGatewayIPv6); err != nil {
				return err
			}
		}
		best, ok := bestGateway(eps, fam.v6)
		sb.mu.Lock()
		cur := *fam.slot
		sb.mu.Unlock()
		switch {
		case ok && best.ep == cur, !ok && cur == nil:
			continue
		case ok:
			if err := sb.ns.ReplaceRoute(ctx, osl.Route{Dst: fam.dst, Gateway: best.gw, LinkIndex: best.ifIndex}); err != nil {
				return err
			}
		case cur == leaving:
			// Nothing to do in the kernel: the route leaves with the link.
		default:
			cur.mu.Lock()
			idx := cur.ifIndex
			cur.mu.Unlock()
			if err := sb.ns.DeleteRoute(ctx, osl.Route{Dst: fam.dst, LinkIndex: idx}); err != nil {
				return err
			}
		}
		sb.mu.Lock()
		*fam.slot = best.ep
		sb.mu.Unlock()
	}
	return nil
}
