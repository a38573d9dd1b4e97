package remote

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// Join sends /NetworkDriver.Join with the sandbox's namespace path
// (SandboxKey) and checks the answer before the controller applies it: the
// interface it names (InterfaceName.SrcName) must exist in the host
// namespace, the gateways must be addresses of their family, and each
// static route a prefix with a next hop for RouteNextHop and none for
// RouteConnected. An answer that fails a check is an error naming the
// field and the value (errdefs.ErrNotFound for a missing interface,
// plugin.ErrProtocol otherwise), and the plugin is told to Leave again.
func (d *Driver) Join(ctx context.Context, req driverapi.JoinRequest) (driverapi.JoinResponse, error) {
	if req.Sandbox == nil {
		return driverapi.JoinResponse{}, fmt.Errorf("%w: join: no sandbox", driverapi.ErrInvalid)
	}
	var resp protocol.JoinResponse
	if err := d.call(ctx, protocol.PathJoin, protocol.JoinRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID, SandboxKey: req.Sandbox.Path(), Options: map[string]any{},
	}, &resp); err != nil {
		return driverapi.JoinResponse{}, err
	}
	out, err := d.joinResponse(ctx, resp)
	if err != nil {
		err = d.refuse(protocol.PathJoin, err)
		if lerr := d.client.Call(context.WithoutCancel(ctx), protocol.PathLeave,
			protocol.LeaveRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID}, &protocol.ErrorResponse{}); lerr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", lerr))
		}
		return driverapi.JoinResponse{}, err
	}
	d.mu.Lock()
	d.endpoints[epKey{req.NetworkID, req.EndpointID}] = &endpoint{srcName: out.SrcName, ifName: req.InterfaceName}
	d.mu.Unlock()
	return out, nil
}

// joinResponse checks a Join answer and converts it.
func (d *Driver) joinResponse(ctx context.Context, resp protocol.JoinResponse) (driverapi.JoinResponse, error) {
	var out driverapi.JoinResponse
	if resp.InterfaceName == nil || resp.InterfaceName.SrcName == "" {
		return out, fmt.Errorf("%w: answer names no interface (InterfaceName.SrcName)", plugin.ErrProtocol)
	}
	src := resp.InterfaceName.SrcName
	if err := linkrules.CheckIfName(src); err != nil {
		return out, fmt.Errorf("%w: InterfaceName.SrcName %q: %w", plugin.ErrProtocol, src, err)
	}
	if _, err := d.hostNS.LinkByName(ctx, src); err != nil {
		if errors.Is(err, osl.ErrLinkNotFound) {
			return out, fmt.Errorf("%w: InterfaceName.SrcName %q: no such interface in the host namespace %s",
				errdefs.ErrNotFound, src, d.hostNS.Path())
		}
		return out, fmt.Errorf("InterfaceName.SrcName %q: %w", src, err)
	}
	out.SrcName = src
	var err error
	if out.Gateway, err = parseAddr("Gateway", resp.Gateway, false); err != nil {
		return out, err
	}
	if out.GatewayIPv6, err = parseAddr("GatewayIPv6", resp.GatewayIPv6, true); err != nil {
		return out, err
	}
	for i, r := range resp.StaticRoutes {
		dst, err := netip.ParsePrefix(r.Destination)
		if err != nil {
			return out, fmt.Errorf("%w: StaticRoutes[%d].Destination %q: %w", plugin.ErrProtocol, i, r.Destination, err)
		}
		sr := driverapi.StaticRoute{Destination: dst.Masked()}
		switch r.RouteType {
		case protocol.RouteNextHop:
			if sr.NextHop, err = netip.ParseAddr(r.NextHop); err != nil || sr.NextHop.Is4() != dst.Addr().Is4() {
				return out, fmt.Errorf("%w: StaticRoutes[%d].NextHop %q: want an address of the destination's family", plugin.ErrProtocol, i, r.NextHop)
			}
		case protocol.RouteConnected:
			if r.NextHop != "" {
				return out, fmt.Errorf("%w: StaticRoutes[%d]: a connected route has no NextHop, got %q", plugin.ErrProtocol, i, r.NextHop)
			}
		default:
			return out, fmt.Errorf("%w: StaticRoutes[%d].RouteType %d: want %d (next hop) or %d (connected)",
				plugin.ErrProtocol, i, r.RouteType, protocol.RouteNextHop, protocol.RouteConnected)
		}
		out.StaticRoutes = append(out.StaticRoutes, sr)
	}
	return out, nil
}

// parseAddr parses an optional gateway of one family.
func parseAddr(field, s string, v6 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() == v6 || a.Is4In6() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return netip.Addr{}, fmt.Errorf("%w: %s %q: want an %s address", plugin.ErrProtocol, field, s, fam)
	}
	return a, nil
}

// Leave takes the interface out of the sandbox and sends
// /NetworkDriver.Leave. As in Docker, the interface goes back to the host
// namespace under the name the plugin gave it, where the plugin removes it
// (at Leave or DeleteEndpoint); its addresses do not follow it. When that
// name is unknown (after a restart) or taken, cnm deletes the interface
// itself. With req.SandboxGone the kernel has destroyed it with the
// namespace, and only the plugin is told.
func (d *Driver) Leave(ctx context.Context, req driverapi.LeaveRequest) error {
	key := epKey{req.NetworkID, req.EndpointID}
	d.mu.Lock()
	ep := d.endpoints[key]
	delete(d.endpoints, key)
	d.mu.Unlock()
	if ep == nil {
		ep = &endpoint{}
	}
	if req.Sandbox != nil {
		name := req.InterfaceName
		if name == "" {
			name = ep.ifName
		}
		if err := d.takeBack(ctx, req.Sandbox, name, ep.srcName); err != nil {
			d.mu.Lock()
			d.endpoints[key] = ep
			d.mu.Unlock()
			return fmt.Errorf("leave: interface %s of sandbox %s: %w", name, req.Sandbox.Path(), err)
		}
	}
	return d.call(ctx, protocol.PathLeave, protocol.LeaveRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID}, &protocol.ErrorResponse{})
}

// takeBack moves the interface called name out of the sandbox, back to the
// host namespace as srcName, or deletes it. An interface that is not there
// (the join failed before the move) is no error.
func (d *Driver) takeBack(ctx context.Context, sb *osl.Namespace, name, srcName string) error {
	if name == "" {
		return nil
	}
	if srcName != "" {
		err := sb.MoveLink(ctx, name, d.hostNS, srcName)
		if err == nil || errors.Is(err, osl.ErrLinkNotFound) {
			return nil
		}
	}
	err := sb.DeleteLink(ctx, name)
	if errors.Is(err, osl.ErrLinkNotFound) {
		return nil
	}
	return err
}
