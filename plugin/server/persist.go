package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// Keys of the server's records in Config.Store.
const (
	prefixNetwork  = "plugin/network/"
	prefixEndpoint = "plugin/endpoint/"
	prefixPool     = "plugin/pool/"
	prefixAddress  = "plugin/address/" // + pool ID + "/" + address
)

// endpointRecord is an endpoint as stored.
type endpointRecord struct {
	NetworkID  string       `json:"network_id"`
	EndpointID string       `json:"endpoint_id"`
	MAC        string       `json:"mac"`
	IPv4       netip.Prefix `json:"ipv4,omitzero"`
	IPv6       netip.Prefix `json:"ipv6,omitzero"`
	// Set while joined: the interface's name in the host namespace, and
	// the daemon's namespace of the container.
	SrcName    string `json:"src_name,omitempty"`
	SandboxKey string `json:"sandbox_key,omitempty"`
}

// poolRecord is a pool as stored, by the server's own pool ID.
type poolRecord struct {
	ID           string       `json:"id"`
	AddressSpace string       `json:"address_space,omitempty"`
	Subnet       netip.Prefix `json:"subnet"`
	IPRange      netip.Prefix `json:"ip_range,omitzero"`
	V6           bool         `json:"v6,omitempty"`
}

func (ep *endpoint) record() endpointRecord {
	return endpointRecord{NetworkID: ep.nid, EndpointID: ep.req.EndpointID, MAC: ep.req.MAC.String(),
		IPv4: ep.req.IPv4, IPv6: ep.req.IPv6, SrcName: ep.srcName, SandboxKey: ep.sandboxKey}
}

// save writes records; without a store it does nothing.
func (s *Server) save(ctx context.Context, ops ...store.Op) error {
	if s.cfg.Store == nil {
		return nil
	}
	if err := s.cfg.Store.Txn(context.WithoutCancel(ctx), ops...); err != nil {
		return fmt.Errorf("record plugin state: %w", err)
	}
	return nil
}

func put(key string, v any) store.Op {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // records are plain data
	}
	return store.Put(key, data)
}

func load[T any](ctx context.Context, s store.Store, prefix string) (map[string]T, error) {
	kvs, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := map[string]T{}
	for _, kv := range kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, fmt.Errorf("%w: record %s: %w", store.ErrCorrupt, kv.Key, err)
		}
		out[strings.TrimPrefix(kv.Key, prefix)] = v
	}
	return out, nil
}

// restore takes back what the store records: pools and addresses into the
// allocator, then networks and endpoints into the driver (the interfaces of
// joined endpoints found, by their MAC, in the container's namespace), then
// lets the driver remove what no record explains.
func (s *Server) restore(ctx context.Context) error {
	st := s.cfg.Store
	if s.cfg.Allocator != nil {
		pools, err := load[poolRecord](ctx, st, prefixPool)
		if err != nil {
			return err
		}
		addrs, err := st.List(ctx, prefixAddress)
		if err != nil {
			return err
		}
		for id, p := range pools {
			pool, err := s.cfg.Allocator.RequestPool(ctx, ipam.PoolRequest{AddressSpace: p.AddressSpace, Subnet: p.Subnet, IPRange: p.IPRange, V6: p.V6})
			if err != nil {
				return fmt.Errorf("pool %s (%s): %w", id, p.Subnet, err)
			}
			s.pools[id] = &serverPool{allocID: pool.ID, subnet: pool.Subnet}
		}
		for _, kv := range addrs {
			pid, a, ok := strings.Cut(strings.TrimPrefix(kv.Key, prefixAddress), "/")
			p := s.pools[pid]
			addr, err := netip.ParseAddr(a)
			if !ok || p == nil || err != nil {
				return fmt.Errorf("%w: record %s", store.ErrCorrupt, kv.Key)
			}
			if _, err := s.cfg.Allocator.RequestAddress(ctx, p.allocID, ipam.AddressRequest{Preferred: addr}); err != nil {
				return fmt.Errorf("address %s of pool %s: %w", addr, pid, err)
			}
		}
	}
	if s.cfg.Driver == nil {
		return nil
	}
	nets, err := load[driverapi.NetworkRequest](ctx, st, prefixNetwork)
	if err != nil {
		return err
	}
	eps, err := load[endpointRecord](ctx, st, prefixEndpoint)
	if err != nil {
		return err
	}
	rd, restorer := s.cfg.Driver.(driverapi.Restorer)
	for id, req := range nets {
		restoreNet := s.cfg.Driver.CreateNetwork
		if restorer {
			restoreNet = rd.RestoreNetwork
		}
		if err := restoreNet(ctx, req); err != nil {
			return fmt.Errorf("network %s: %w", id, err)
		}
	}
	for eid, r := range eps {
		if err := s.restoreEndpoint(ctx, r); err != nil {
			return fmt.Errorf("endpoint %s: %w", eid, err)
		}
	}
	if restorer {
		return rd.FinishRestore(ctx)
	}
	return nil
}

// restoreEndpoint takes one endpoint back. A joined one whose container's
// namespace or interface is gone is taken back as not joined.
func (s *Server) restoreEndpoint(ctx context.Context, r endpointRecord) error {
	mac, err := net.ParseMAC(r.MAC)
	if err != nil {
		return fmt.Errorf("%w: mac %q", store.ErrCorrupt, r.MAC)
	}
	ep := &endpoint{nid: r.NetworkID, req: driverapi.EndpointRequest{NetworkID: r.NetworkID, EndpointID: r.EndpointID, MAC: mac, IPv4: r.IPv4, IPv6: r.IPv6}}
	req := driverapi.RestoreEndpointRequest{NetworkID: r.NetworkID, EndpointID: r.EndpointID, MAC: mac, IPv4: r.IPv4, IPv6: r.IPv6}
	if r.SandboxKey != "" {
		ns, name, err := findInterface(ctx, r.SandboxKey, mac)
		if err != nil {
			return err
		}
		if ns != nil {
			defer ns.Close()
			req.Sandbox, req.InterfaceName = ns, name
			ep.srcName, ep.sandboxKey = r.SrcName, r.SandboxKey
		}
	}
	if rd, ok := s.cfg.Driver.(driverapi.Restorer); ok {
		if err := rd.RestoreEndpoint(ctx, req); err != nil {
			return err
		}
	} else if p, ok := s.cfg.Driver.(driverapi.EndpointPreparer); ok {
		if err := p.CreateEndpoint(ctx, ep.req); err != nil {
			return err
		}
	}
	s.endpoints[r.EndpointID] = ep
	return nil
}

// findInterface opens the namespace at path and finds the link with mac in
// it. A namespace or link that is gone gives a nil namespace; other errors
// (out of file descriptors, say) are returned: transient is not gone.
func findInterface(ctx context.Context, path string, mac net.HardwareAddr) (*osl.Namespace, string, error) {
	ns, err := osl.OpenNamespace(ctx, path)
	if errors.Is(err, osl.ErrNotNamespace) || errors.Is(err, fs.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	links, err := ns.Links(ctx)
	if err != nil {
		ns.Close()
		return nil, "", err
	}
	for _, l := range links {
		if l.MAC.String() == mac.String() {
			return ns, l.Name, nil
		}
	}
	ns.Close()
	return nil, "", nil
}
