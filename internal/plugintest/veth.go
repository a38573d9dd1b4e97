package plugintest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// VethPlugin is a network plugin written with Docker's SDK: a bridge per
// network, a veth pair per joined endpoint. Start it with [StartVeth].
type VethPlugin struct {
	recorder
	*Server
	h *netlink.Handle // bound to the host namespace

	// mu guards the fields below.
	mu        sync.Mutex
	networks  map[string]*vethNet
	endpoints map[string]*vethEP // by endpoint ID
	fail      func(method string) error
	routes    []*network.StaticRoute
}

type vethNet struct {
	bridge string
	gw     netip.Prefix
}

type vethEP struct {
	nid        string
	host, peer string
	mac        net.HardwareAddr
}

var _ network.Driver = (*VethPlugin)(nil)

// StartVeth serves a veth plugin on a unix socket at socket. It makes its
// bridges and veth pairs in the network namespace at hostNS. Close it when
// done: it stops serving; the kernel objects it made stay until deleted
// through the protocol or with the namespace.
func StartVeth(socket, hostNS string) (*VethPlugin, error) {
	nsh, err := netns.GetFromPath(hostNS)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, err
	}
	p := &VethPlugin{h: h, networks: map[string]*vethNet{}, endpoints: map[string]*vethEP{}}
	p.Server, err = serve(socket, network.NewHandler(p).Serve)
	if err != nil {
		h.Close()
		return nil, err
	}
	return p, nil
}

// Close stops serving (as a plugin that exits) and releases the netlink
// handle.
func (p *VethPlugin) Close() error {
	err := p.Server.Close()
	p.h.Close()
	return err
}

// SetFail makes the plugin refuse calls: for every call, fn(method) is
// asked first ("Join"), and a non-nil error is sent back as the Err field.
// nil: refuse nothing.
func (p *VethPlugin) SetFail(fn func(method string) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = fn
}

// SetRoutes makes Join answer routes as its static routes.
func (p *VethPlugin) SetRoutes(routes ...*network.StaticRoute) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.routes = routes
}

// Endpoint returns the names of an endpoint's veth ends while it is joined.
func (p *VethPlugin) Endpoint(eid string) (host, peer string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep, ok := p.endpoints[eid]
	if !ok || ep.host == "" {
		return "", "", false
	}
	return ep.host, ep.peer, true
}

// Bridge returns the name of a network's bridge.
func (p *VethPlugin) Bridge(nid string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, ok := p.networks[nid]
	if !ok {
		return "", false
	}
	return n.bridge, true
}

func (p *VethPlugin) begin(method string, req any) error {
	p.record("NetworkDriver."+method, req)
	p.mu.Lock()
	fail := p.fail
	p.mu.Unlock()
	if fail != nil {
		return fail(method)
	}
	return nil
}

func short(id string) string {
	if len(id) > 10 {
		return id[:10]
	}
	return id
}

// GetCapabilities reports a local driver.
func (p *VethPlugin) GetCapabilities() (*network.CapabilitiesResponse, error) {
	if err := p.begin("GetCapabilities", nil); err != nil {
		return nil, err
	}
	return &network.CapabilitiesResponse{Scope: network.LocalScope}, nil
}

// CreateNetwork makes a bridge with the IPv4 gateway address, up.
func (p *VethPlugin) CreateNetwork(req *network.CreateNetworkRequest) (retErr error) {
	if err := p.begin("CreateNetwork", req); err != nil {
		return err
	}
	n := &vethNet{bridge: "vpb" + short(req.NetworkID)}
	if len(req.IPv4Data) > 0 && req.IPv4Data[0].Gateway != "" {
		gw, err := netip.ParsePrefix(req.IPv4Data[0].Gateway)
		if err != nil {
			return fmt.Errorf("gateway %q: %w", req.IPv4Data[0].Gateway, err)
		}
		n.gw = gw
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge}}
	if err := p.h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", n.bridge, err)
	}
	defer func() {
		if retErr != nil {
			p.h.LinkDel(br)
		}
	}()
	if n.gw.IsValid() {
		if err := p.h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: n.gw.Addr().AsSlice(), Mask: net.CIDRMask(n.gw.Bits(), 32)}}); err != nil {
			return err
		}
	}
	if err := p.h.LinkSetUp(br); err != nil {
		return err
	}
	p.mu.Lock()
	p.networks[req.NetworkID] = n
	p.mu.Unlock()
	return nil
}

// DeleteNetwork deletes the bridge.
func (p *VethPlugin) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	if err := p.begin("DeleteNetwork", req); err != nil {
		return err
	}
	p.mu.Lock()
	n, ok := p.networks[req.NetworkID]
	delete(p.networks, req.NetworkID)
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("no network %s", req.NetworkID)
	}
	return p.del(n.bridge)
}

// del deletes a link; one that is gone is no error.
func (p *VethPlugin) del(name string) error {
	l, err := p.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return p.h.LinkDel(l)
}

// AllocateNetwork answers with one option.
func (p *VethPlugin) AllocateNetwork(req *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	if err := p.begin("AllocateNetwork", req); err != nil {
		return nil, err
	}
	return &network.AllocateNetworkResponse{Options: map[string]string{"vni": "4242"}}, nil
}

// FreeNetwork accepts.
func (p *VethPlugin) FreeNetwork(req *network.FreeNetworkRequest) error {
	return p.begin("FreeNetwork", req)
}

// CreateEndpoint remembers the MAC the daemon assigned.
func (p *VethPlugin) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := p.begin("CreateEndpoint", req); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.networks[req.NetworkID]; !ok {
		return nil, fmt.Errorf("no network %s", req.NetworkID)
	}
	ep := &vethEP{nid: req.NetworkID}
	if req.Interface != nil && req.Interface.MacAddress != "" {
		mac, err := net.ParseMAC(req.Interface.MacAddress)
		if err != nil {
			return nil, err
		}
		ep.mac = mac
	}
	p.endpoints[req.EndpointID] = ep
	return &network.CreateEndpointResponse{}, nil
}

// DeleteEndpoint deletes the veth pair if it still exists.
func (p *VethPlugin) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	if err := p.begin("DeleteEndpoint", req); err != nil {
		return err
	}
	p.mu.Lock()
	ep, ok := p.endpoints[req.EndpointID]
	delete(p.endpoints, req.EndpointID)
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("no endpoint %s", req.EndpointID)
	}
	if ep.host != "" {
		return p.del(ep.host)
	}
	return nil
}

// EndpointInfo reports the host end's name.
func (p *VethPlugin) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	if err := p.begin("EndpointOperInfo", req); err != nil {
		return nil, err
	}
	host, _, _ := p.Endpoint(req.EndpointID)
	return &network.InfoResponse{Value: map[string]string{"host_veth": host}}, nil
}

// Join makes a veth pair with the host end on the bridge, up, and the other
// end with the endpoint's MAC, for the daemon to move.
func (p *VethPlugin) Join(req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := p.begin("Join", req); err != nil {
		return nil, err
	}
	p.mu.Lock()
	ep, ok := p.endpoints[req.EndpointID]
	n := p.networks[req.NetworkID]
	p.mu.Unlock()
	if !ok || n == nil {
		return nil, fmt.Errorf("no endpoint %s on network %s", req.EndpointID, req.NetworkID)
	}
	br, err := p.h.LinkByName(n.bridge)
	if err != nil {
		return nil, err
	}
	host, peer := "vph"+short(req.EndpointID), "vpp"+short(req.EndpointID)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index}, PeerName: peer, PeerHardwareAddr: ep.mac}
	if err := p.h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", host, err)
	}
	if err := p.h.LinkSetUp(veth); err != nil {
		p.h.LinkDel(veth)
		return nil, err
	}
	p.mu.Lock()
	ep.host, ep.peer = host, peer
	routes := p.routes
	p.mu.Unlock()
	resp := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: peer, DstPrefix: "eth"}, StaticRoutes: routes}
	if n.gw.IsValid() {
		resp.Gateway = n.gw.Addr().String()
	}
	return resp, nil
}

// Leave deletes the veth pair (the daemon moved it back first).
func (p *VethPlugin) Leave(req *network.LeaveRequest) error {
	if err := p.begin("Leave", req); err != nil {
		return err
	}
	p.mu.Lock()
	ep, ok := p.endpoints[req.EndpointID]
	var host string
	if ok {
		host, ep.host, ep.peer = ep.host, "", ""
	}
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("no endpoint %s", req.EndpointID)
	}
	if host != "" {
		return p.del(host)
	}
	return nil
}

// DiscoverNew accepts.
func (p *VethPlugin) DiscoverNew(req *network.DiscoveryNotification) error {
	return p.begin("DiscoverNew", req)
}

// DiscoverDelete accepts.
func (p *VethPlugin) DiscoverDelete(req *network.DiscoveryNotification) error {
	return p.begin("DiscoverDelete", req)
}

// ProgramExternalConnectivity accepts.
func (p *VethPlugin) ProgramExternalConnectivity(req *network.ProgramExternalConnectivityRequest) error {
	return p.begin("ProgramExternalConnectivity", req)
}

// RevokeExternalConnectivity accepts.
func (p *VethPlugin) RevokeExternalConnectivity(req *network.RevokeExternalConnectivityRequest) error {
	return p.begin("RevokeExternalConnectivity", req)
}

// Stop stops serving, as a plugin process that exits, but keeps the
// plugin's state (a real plugin would have saved it); [VethPlugin.Start]
// serves again on the same socket.
func (p *VethPlugin) Stop() error { return p.Server.Close() }

// Start serves again after Stop.
func (p *VethPlugin) Start() error {
	s, err := serve(p.Socket, network.NewHandler(p).Serve)
	if err != nil {
		return err
	}
	p.Server = s
	return nil
}
