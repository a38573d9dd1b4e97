package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/seed53641549/cnm/plugin/protocol"
)

// tiny is a whole network plugin: a Linux bridge per network, a veth pair
// per joined endpoint with one end on the bridge and the other handed to
// the daemon (cnm here, dockerd just as well) to move into the container.
// It speaks Docker's protocol with plain net/http and the message types of
// cnm's plugin/protocol package.
type tiny struct {
	h *netlink.Handle // bound to the namespace the plugin works in

	mu       sync.Mutex              // guards networks
	networks map[string]netip.Prefix // network ID -> gateway with prefix length
}

// newTiny returns the plugin, working in the network namespace at nsPath.
func newTiny(nsPath string) (*tiny, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	return &tiny{h: h, networks: map[string]netip.Prefix{}}, nil
}

// handler routes each protocol call to its function.
func (p *tiny) handler() http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", protocol.ContentType)
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			v = protocol.ErrorResponse{Err: err.Error()}
		}
		json.NewEncoder(w).Encode(v)
	}
	handle := func(path string, fn func(body *json.Decoder) (any, error)) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(json.NewDecoder(r.Body))
			reply(w, v, err)
		})
	}
	handle(protocol.PathActivate, func(*json.Decoder) (any, error) {
		return protocol.ActivateResponse{Implements: []string{protocol.NetworkDriver}}, nil
	})
	handle(protocol.PathGetCapabilities, func(*json.Decoder) (any, error) {
		return protocol.CapabilitiesResponse{Scope: protocol.LocalScope}, nil
	})
	handle(protocol.PathCreateNetwork, func(d *json.Decoder) (any, error) {
		var req protocol.CreateNetworkRequest
		if err := d.Decode(&req); err != nil {
			return nil, err
		}
		return struct{}{}, p.createNetwork(req)
	})
	handle(protocol.PathDeleteNetwork, func(d *json.Decoder) (any, error) {
		var req protocol.DeleteNetworkRequest
		if err := d.Decode(&req); err != nil {
			return nil, err
		}
		p.mu.Lock()
		delete(p.networks, req.NetworkID)
		p.mu.Unlock()
		return struct{}{}, p.deleteLink(bridgeName(req.NetworkID))
	})
	handle(protocol.PathJoin, func(d *json.Decoder) (any, error) {
		var req protocol.JoinRequest
		if err := d.Decode(&req); err != nil {
			return nil, err
		}
		return p.join(req)
	})
	handle(protocol.PathLeave, func(d *json.Decoder) (any, error) {
		var req protocol.LeaveRequest
		if err := d.Decode(&req); err != nil {
			return nil, err
		}
		return struct{}{}, p.deleteLink("tnh" + short(req.EndpointID))
	})
	// Calls this plugin has nothing to do for.
	for _, path := range []string{protocol.PathCreateEndpoint, protocol.PathDeleteEndpoint, protocol.PathEndpointOperInfo,
		protocol.PathDiscoverNew, protocol.PathDiscoverDelete,
		protocol.PathProgramExternalConnectivity, protocol.PathRevokeExternalConnectivity} {
		handle(path, func(*json.Decoder) (any, error) { return struct{}{}, nil })
	}
	return mux
}

func short(id string) string { return id[:min(len(id), 10)] }

func bridgeName(networkID string) string { return "tnb" + short(networkID) }

// createNetwork makes the network's bridge with the IPv4 gateway, up.
func (p *tiny) createNetwork(req protocol.CreateNetworkRequest) error {
	if len(req.IPv4Data) != 1 || req.IPv4Data[0].Gateway == "" {
		return errors.New("tiny needs one IPv4 pool with a gateway")
	}
	gw, err := netip.ParsePrefix(req.IPv4Data[0].Gateway)
	if err != nil {
		return fmt.Errorf("gateway %q: %w", req.IPv4Data[0].Gateway, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName(req.NetworkID)}}
	if err := p.h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", br.Name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}}
	if err := errors.Join(p.h.AddrAdd(br, addr), p.h.LinkSetUp(br)); err != nil {
		p.h.LinkDel(br)
		return err
	}
	p.mu.Lock()
	p.networks[req.NetworkID] = gw
	p.mu.Unlock()
	return nil
}

// join makes the veth pair and names the end the daemon moves.
func (p *tiny) join(req protocol.JoinRequest) (any, error) {
	p.mu.Lock()
	gw, ok := p.networks[req.NetworkID]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no network %s", req.NetworkID)
	}
	br, err := p.h.LinkByName(bridgeName(req.NetworkID))
	if err != nil {
		return nil, err
	}
	host, peer := "tnh"+short(req.EndpointID), "tnp"+short(req.EndpointID)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index}, PeerName: peer}
	if err := p.h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", host, err)
	}
	if err := p.h.LinkSetUp(veth); err != nil {
		p.h.LinkDel(veth)
		return nil, err
	}
	return protocol.JoinResponse{
		InterfaceName: &protocol.InterfaceName{SrcName: peer, DstPrefix: "eth"},
		Gateway:       gw.Addr().String(),
	}, nil
}

// deleteLink deletes a link; one that is gone is no error.
func (p *tiny) deleteLink(name string) error {
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
