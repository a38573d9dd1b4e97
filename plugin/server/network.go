package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/mac"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/store"
)

func (s *Server) routeNetwork() {
	for path, fn := range map[string]func(context.Context, func(any) error) (any, error){
		protocol.PathGetCapabilities:             s.capabilities,
		protocol.PathCreateNetwork:               s.createNetwork,
		protocol.PathDeleteNetwork:               s.deleteNetwork,
		protocol.PathAllocateNetwork:             s.allocateNetwork,
		protocol.PathFreeNetwork:                 s.ignore(&protocol.FreeNetworkRequest{}),
		protocol.PathCreateEndpoint:              s.createEndpoint,
		protocol.PathDeleteEndpoint:              s.deleteEndpoint,
		protocol.PathEndpointOperInfo:            s.endpointInfo,
		protocol.PathJoin:                        s.join,
		protocol.PathLeave:                       s.leave,
		protocol.PathDiscoverNew:                 s.ignore(&protocol.DiscoveryNotification{}),
		protocol.PathDiscoverDelete:              s.ignore(&protocol.DiscoveryNotification{}),
		protocol.PathProgramExternalConnectivity: s.programExternal,
		protocol.PathRevokeExternalConnectivity:  s.revokeExternal,
	} {
		s.mux.HandleFunc(path, s.handle(fn))
	}
}

// ignore accepts a well-formed call that needs nothing done.
func (s *Server) ignore(req any) func(context.Context, func(any) error) (any, error) {
	return func(_ context.Context, decode func(any) error) (any, error) { return nil, decode(req) }
}

func (s *Server) capabilities(context.Context, func(any) error) (any, error) {
	scope := protocol.LocalScope
	if s.cfg.Driver.Capability().Scope == driverapi.GlobalScope {
		scope = protocol.GlobalScope
	}
	return protocol.CapabilitiesResponse{Scope: scope}, nil
}

func (s *Server) createNetwork(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.CreateNetworkRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	nreq, err := networkRequest(req.NetworkID, req.Options, req.IPv4Data, req.IPv6Data)
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Driver.CreateNetwork(ctx, nreq); err != nil {
		return nil, err
	}
	if err := s.save(ctx, put(prefixNetwork+nreq.ID, nreq)); err != nil {
		return nil, errors.Join(err, s.cfg.Driver.DeleteNetwork(context.WithoutCancel(ctx), nreq.ID))
	}
	return nil, nil
}

// networkRequest converts a CreateNetwork request.
func networkRequest(id string, opts map[string]any, v4, v6 []protocol.IPAMData) (driverapi.NetworkRequest, error) {
	if id == "" {
		return driverapi.NetworkRequest{}, invalid("NetworkID is empty")
	}
	req := driverapi.NetworkRequest{ID: id, Name: id, Options: map[string]string{}}
	switch g := opts[protocol.OptionGeneric].(type) {
	case nil:
	case map[string]any:
		for k, v := range g {
			str, ok := v.(string)
			if !ok {
				return req, invalid("option %s: %q is %T, want a string", protocol.OptionGeneric, k, v)
			}
			req.Options[k] = str
		}
	default:
		return req, invalid("option %s is %T, want an object", protocol.OptionGeneric, g)
	}
	if v, ok := opts[protocol.OptionInternal]; ok {
		b, isBool := v.(bool)
		if !isBool {
			return req, invalid("option %s is %T, want a boolean", protocol.OptionInternal, v)
		}
		req.Internal = b
	}
	var err error
	if req.IPv4, err = ipamData("IPv4Data", v4, false); err != nil {
		return req, err
	}
	if req.IPv6, err = ipamData("IPv6Data", v6, true); err != nil {
		return req, err
	}
	return req, nil
}

// ipamData converts one family's pools: none, or one.
func ipamData(field string, pools []protocol.IPAMData, v6 bool) (*driverapi.IPAMData, error) {
	switch len(pools) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, invalid("%s: %d pools: cnm drivers take one per family", field, len(pools))
	}
	p := pools[0]
	pool, err := netip.ParsePrefix(p.Pool)
	if err != nil || pool.Masked() != pool || pool.Addr().Is6() != v6 {
		return nil, invalid("%s[0].Pool %q: want a masked prefix of the family", field, p.Pool)
	}
	out := &driverapi.IPAMData{Pool: pool}
	if p.Gateway != "" {
		gw, err := parsePrefixOrAddr(p.Gateway, pool.Bits())
		if err != nil || !pool.Contains(gw.Addr()) {
			return nil, invalid("%s[0].Gateway %q: want an address in %s", field, p.Gateway, pool)
		}
		out.Gateway = gw
	}
	for k, v := range p.AuxAddresses {
		a, err := parsePrefixOrAddr(v, pool.Bits())
		if err != nil || !pool.Contains(a.Addr()) {
			return nil, invalid("%s[0].AuxAddresses[%q] %q: want an address in %s", field, k, v, pool)
		}
		if out.AuxAddresses == nil {
			out.AuxAddresses = map[string]netip.Addr{}
		}
		out.AuxAddresses[k] = a.Addr()
	}
	return out, nil
}

// parsePrefixOrAddr reads "10.0.0.1/24", or "10.0.0.1" with bits.
func parsePrefixOrAddr(s string, bits int) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, bits), nil
}

func (s *Server) deleteNetwork(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.DeleteNetworkRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	// The network as recorded, to make it again if its record cannot be
	// deleted: a delete that fails leaves the network whole, as a retry
	// (or the next restore, which makes it from the record) expects.
	var nreq *driverapi.NetworkRequest
	if s.cfg.Store != nil {
		kv, err := s.cfg.Store.Get(ctx, prefixNetwork+req.NetworkID)
		switch {
		case err == nil:
			nreq = new(driverapi.NetworkRequest)
			if err := json.Unmarshal(kv.Value, nreq); err != nil {
				return nil, fmt.Errorf("%w: record %s: %w", store.ErrCorrupt, kv.Key, err)
			}
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("read plugin state: %w", err)
		}
	}
	if err := s.cfg.Driver.DeleteNetwork(ctx, req.NetworkID); err != nil {
		return nil, err
	}
	if err := s.save(ctx, store.Del(prefixNetwork+req.NetworkID)); err != nil {
		if nreq != nil {
			err = errors.Join(err, s.cfg.Driver.CreateNetwork(context.WithoutCancel(ctx), *nreq))
		}
		return nil, err
	}
	return nil, nil
}

// allocateNetwork: cnm drivers need no cluster-wide resources.
func (s *Server) allocateNetwork(_ context.Context, decode func(any) error) (any, error) {
	var req protocol.AllocateNetworkRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	return protocol.AllocateNetworkResponse{Options: map[string]string{}}, nil
}

func (s *Server) createEndpoint(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.CreateEndpointRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	if req.NetworkID == "" || req.EndpointID == "" {
		return nil, invalid("NetworkID %q, EndpointID %q: both are required", req.NetworkID, req.EndpointID)
	}
	in := req.Interface
	if in == nil {
		in = &protocol.EndpointInterface{}
	}
	ereq := driverapi.EndpointRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID}
	var resp protocol.CreateEndpointResponse
	for _, f := range []struct {
		name, value string
		dst         *netip.Prefix
	}{{"Interface.Address", in.Address, &ereq.IPv4}, {"Interface.AddressIPv6", in.AddressIPv6, &ereq.IPv6}} {
		if f.value == "" {
			continue
		}
		p, err := netip.ParsePrefix(f.value)
		if err != nil || p.Addr().Is6() != (f.name == "Interface.AddressIPv6") {
			return nil, invalid("%s %q: want an address with prefix length", f.name, f.value)
		}
		*f.dst = p
	}
	if in.MacAddress != "" {
		mac, err := net.ParseMAC(in.MacAddress)
		if err != nil || len(mac) != 6 {
			return nil, invalid("Interface.MacAddress %q: want a 6-byte MAC", in.MacAddress)
		}
		ereq.MAC = mac
	} else {
		ereq.MAC = mac.Random()
		resp.Interface = &protocol.EndpointInterface{MacAddress: ereq.MAC.String()}
	}
	s.mu.Lock()
	if _, ok := s.endpoints[req.EndpointID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: endpoint %s", driverapi.ErrExists, req.EndpointID)
	}
	ep := &endpoint{nid: req.NetworkID, req: ereq}
	s.endpoints[req.EndpointID] = ep
	s.mu.Unlock()
	p, prepare := s.cfg.Driver.(driverapi.EndpointPreparer)
	if prepare {
		if err := p.CreateEndpoint(ctx, ereq); err != nil {
			s.forget(req.EndpointID)
			return nil, err
		}
	}
	if err := s.save(ctx, put(prefixEndpoint+req.EndpointID, ep.record())); err != nil {
		if prepare {
			err = errors.Join(err, p.DeleteEndpoint(context.WithoutCancel(ctx), req.NetworkID, req.EndpointID))
		}
		s.forget(req.EndpointID)
		return nil, err
	}
	return resp, nil
}

func (s *Server) forget(eid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.endpoints, eid)
}

func (s *Server) endpoint(nid, eid string) (*endpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.endpoints[eid]
	if !ok || ep.nid != nid {
		return nil, fmt.Errorf("%w: endpoint %s on network %s", driverapi.ErrNotFound, eid, nid)
	}
	return ep, nil
}

func (s *Server) deleteEndpoint(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.DeleteEndpointRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	ep, err := s.endpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	p, prepare := s.cfg.Driver.(driverapi.EndpointPreparer)
	if prepare {
		if err := p.DeleteEndpoint(ctx, req.NetworkID, req.EndpointID); err != nil {
			return nil, err
		}
	}
	// A record that cannot be deleted leaves the endpoint whole: the
	// driver is told of it again and the server keeps it.
	if err := s.save(ctx, store.Del(prefixEndpoint+req.EndpointID)); err != nil {
		if prepare {
			err = errors.Join(err, p.CreateEndpoint(context.WithoutCancel(ctx), ep.req))
		}
		return nil, err
	}
	s.forget(req.EndpointID)
	return nil, nil
}

func (s *Server) endpointInfo(_ context.Context, decode func(any) error) (any, error) {
	var req protocol.EndpointInfoRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	ep, err := s.endpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := map[string]any{"mac_address": ep.req.MAC.String()}
	if ep.srcName != "" {
		v["interface"] = ep.srcName
	}
	return protocol.EndpointInfoResponse{Value: v}, nil
}

// srcName is the host-namespace name of an endpoint's interface.
func srcName(eid string) string { return "cnm" + eid[:min(len(eid), 10)] }

func (s *Server) join(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.JoinRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	ep, err := s.endpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	name := srcName(req.EndpointID)
	resp, err := s.cfg.Driver.Join(ctx, driverapi.JoinRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID, Sandbox: s.cfg.HostNS, InterfaceName: name,
		MAC: ep.req.MAC, IPv4: ep.req.IPv4, IPv6: ep.req.IPv6,
	})
	if err != nil {
		return nil, err
	}
	if resp.SrcName != "" {
		name = resp.SrcName
	}
	s.mu.Lock()
	ep.srcName, ep.sandboxKey = name, req.SandboxKey
	rec := ep.record()
	s.mu.Unlock()
	if err := s.save(ctx, put(prefixEndpoint+req.EndpointID, rec)); err != nil {
		s.mu.Lock()
		ep.srcName, ep.sandboxKey = "", ""
		s.mu.Unlock()
		return nil, errors.Join(err, s.cfg.Driver.Leave(context.WithoutCancel(ctx), driverapi.LeaveRequest{
			NetworkID: req.NetworkID, EndpointID: req.EndpointID, Sandbox: s.cfg.HostNS, InterfaceName: name,
		}))
	}
	out := protocol.JoinResponse{InterfaceName: &protocol.InterfaceName{SrcName: name, DstPrefix: "eth"}}
	if resp.Gateway.IsValid() {
		out.Gateway = resp.Gateway.String()
	}
	if resp.GatewayIPv6.IsValid() {
		out.GatewayIPv6 = resp.GatewayIPv6.String()
	}
	for _, r := range resp.StaticRoutes {
		sr := protocol.StaticRoute{Destination: r.Destination.String(), RouteType: protocol.RouteConnected}
		if r.NextHop.IsValid() {
			sr.RouteType, sr.NextHop = protocol.RouteNextHop, r.NextHop.String()
		}
		out.StaticRoutes = append(out.StaticRoutes, sr)
	}
	return out, nil
}

func (s *Server) leave(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.LeaveRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	ep, err := s.endpoint(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	name := ep.srcName
	s.mu.Unlock()
	// The daemon moved the interface back under its name.
	if err := s.cfg.Driver.Leave(ctx, driverapi.LeaveRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID, Sandbox: s.cfg.HostNS, InterfaceName: name,
	}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ep.srcName, ep.sandboxKey = "", ""
	rec := ep.record()
	s.mu.Unlock()
	// A leave whose record failed is finished by the next restore, which
	// finds no interface in the container.
	return nil, s.save(ctx, put(prefixEndpoint+req.EndpointID, rec))
}

func (s *Server) programExternal(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.ProgramExternalConnectivityRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	return nil, s.external(ctx, req.NetworkID, req.EndpointID, req.Options[protocol.OptionPortMap], true)
}

// external programs (or revokes) an endpoint's external connectivity, with
// the ports of the port map option portmap, in a driver that gives it;
// others have nothing to do (and the option is not read).
func (s *Server) external(ctx context.Context, networkID, endpointID string, portmap any, program bool) error {
	ec, ok := s.cfg.Driver.(driverapi.ExternalConnector)
	if !ok {
		return nil
	}
	ep, err := s.endpoint(networkID, endpointID)
	if err != nil {
		return err
	}
	ports, err := portMappings(portmap)
	if err != nil {
		return err
	}
	req := driverapi.ExternalRequest{
		NetworkID: networkID, EndpointID: endpointID, IPv4: ep.req.IPv4.Addr(), IPv6: ep.req.IPv6.Addr(), Ports: ports,
	}
	if program {
		return ec.ProgramExternalConnectivity(ctx, req)
	}
	return ec.RevokeExternalConnectivity(ctx, req)
}

// portMappings converts the port map option (a JSON list of PortBinding).
func portMappings(v any) ([]driverapi.PortMapping, error) {
	if v == nil {
		return nil, nil
	}
	data, _ := json.Marshal(v)
	var bindings []protocol.PortBinding
	if err := json.Unmarshal(data, &bindings); err != nil {
		return nil, invalid("option %s: %v", protocol.OptionPortMap, err)
	}
	var out []driverapi.PortMapping
	for i, b := range bindings {
		pm := driverapi.PortMapping{HostPort: b.HostPort, HostPortEnd: b.HostPortEnd, ContainerPort: b.Port}
		switch b.Proto {
		case protocol.ProtoTCP:
			pm.Proto = "tcp"
		case protocol.ProtoUDP:
			pm.Proto = "udp"
		case protocol.ProtoSCTP:
			pm.Proto = "sctp"
		default:
			return nil, invalid("option %s[%d].Proto %d", protocol.OptionPortMap, i, b.Proto)
		}
		if b.HostIP != "" {
			a, err := netip.ParseAddr(b.HostIP)
			if err != nil {
				return nil, invalid("option %s[%d].HostIP %q", protocol.OptionPortMap, i, b.HostIP)
			}
			pm.HostIP = a
		}
		out = append(out, pm)
	}
	return out, nil
}

func (s *Server) revokeExternal(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.RevokeExternalConnectivityRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	return nil, s.external(ctx, req.NetworkID, req.EndpointID, nil, false)
}
