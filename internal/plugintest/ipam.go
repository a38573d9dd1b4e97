package plugintest

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/docker/go-plugins-helpers/ipam"
)

// IPAMPlugin is an IPAM plugin written with Docker's SDK. It hands out the
// pools asked for, or its default pools, and their addresses in order.
// Start it with [StartIPAM].
type IPAMPlugin struct {
	recorder
	*Server

	// mu guards the fields below.
	mu     sync.Mutex
	defV4  netip.Prefix
	defV6  netip.Prefix
	nextID int
	pools  map[string]*ipamPool
}

type ipamPool struct {
	subnet netip.Prefix
	used   map[netip.Addr]bool
}

var _ ipam.Ipam = (*IPAMPlugin)(nil)

// StartIPAM serves an IPAM plugin on a unix socket at socket; a pool
// request without a subnet gets defV4 or defV6.
func StartIPAM(socket string, defV4, defV6 netip.Prefix) (*IPAMPlugin, error) {
	p := &IPAMPlugin{defV4: defV4, defV6: defV6, pools: map[string]*ipamPool{}}
	var err error
	p.Server, err = serve(socket, ipam.NewHandler(p).Serve)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Pools returns the subnets of the pools held, by pool ID.
func (p *IPAMPlugin) Pools() map[string]netip.Prefix {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]netip.Prefix{}
	for id, pl := range p.pools {
		out[id] = pl.subnet
	}
	return out
}

// Allocated returns how many addresses are allocated in all pools.
func (p *IPAMPlugin) Allocated() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pl := range p.pools {
		n += len(pl.used)
	}
	return n
}

// GetCapabilities needs no MAC.
func (p *IPAMPlugin) GetCapabilities() (*ipam.CapabilitiesResponse, error) {
	p.record("IpamDriver.GetCapabilities", nil)
	return &ipam.CapabilitiesResponse{}, nil
}

// GetDefaultAddressSpaces names Docker's address spaces.
func (p *IPAMPlugin) GetDefaultAddressSpaces() (*ipam.AddressSpacesResponse, error) {
	p.record("IpamDriver.GetDefaultAddressSpaces", nil)
	return &ipam.AddressSpacesResponse{LocalDefaultAddressSpace: "LocalDefault", GlobalDefaultAddressSpace: "GlobalDefault"}, nil
}

// RequestPool reserves the subnet asked for, or the default one.
func (p *IPAMPlugin) RequestPool(req *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	p.record("IpamDriver.RequestPool", req)
	p.mu.Lock()
	defer p.mu.Unlock()
	subnet := p.defV4
	if req.V6 {
		subnet = p.defV6
	}
	if req.Pool != "" {
		s, err := netip.ParsePrefix(req.Pool)
		if err != nil {
			return nil, fmt.Errorf("pool %q: %w", req.Pool, err)
		}
		subnet = s
	}
	for _, pl := range p.pools {
		if pl.subnet.Overlaps(subnet) {
			return nil, fmt.Errorf("pool %s overlaps %s", subnet, pl.subnet)
		}
	}
	p.nextID++
	id := fmt.Sprintf("ipt-%d", p.nextID)
	p.pools[id] = &ipamPool{subnet: subnet, used: map[netip.Addr]bool{}}
	return &ipam.RequestPoolResponse{PoolID: id, Pool: subnet.String()}, nil
}

// ReleasePool drops a pool.
func (p *IPAMPlugin) ReleasePool(req *ipam.ReleasePoolRequest) error {
	p.record("IpamDriver.ReleasePool", req)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pools[req.PoolID]; !ok {
		return fmt.Errorf("no pool %s", req.PoolID)
	}
	delete(p.pools, req.PoolID)
	return nil
}

// RequestAddress allocates the address asked for, or the first free one
// after the subnet's first address.
func (p *IPAMPlugin) RequestAddress(req *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	p.record("IpamDriver.RequestAddress", req)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		return nil, fmt.Errorf("no pool %s", req.PoolID)
	}
	var a netip.Addr
	if req.Address != "" {
		var err error
		if a, err = netip.ParseAddr(req.Address); err != nil || !pl.subnet.Contains(a) {
			return nil, fmt.Errorf("address %q is not in %s", req.Address, pl.subnet)
		}
		if pl.used[a] {
			return nil, fmt.Errorf("address %s is in use", a)
		}
	} else {
		for c := pl.subnet.Addr().Next().Next(); pl.subnet.Contains(c); c = c.Next() {
			if !pl.used[c] && pl.subnet.Contains(c.Next()) {
				a = c
				break
			}
		}
		if !a.IsValid() {
			return nil, fmt.Errorf("pool %s is full", pl.subnet)
		}
	}
	pl.used[a] = true
	return &ipam.RequestAddressResponse{Address: netip.PrefixFrom(a, pl.subnet.Bits()).String()}, nil
}

// ReleaseAddress frees an address.
func (p *IPAMPlugin) ReleaseAddress(req *ipam.ReleaseAddressRequest) error {
	p.record("IpamDriver.ReleaseAddress", req)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		return fmt.Errorf("no pool %s", req.PoolID)
	}
	a, err := netip.ParseAddr(req.Address)
	if err != nil || !pl.used[a] {
		return fmt.Errorf("address %q is not allocated", req.Address)
	}
	delete(pl.used, a)
	return nil
}

// Restore gives the plugin pools and allocated addresses, as a plugin that
// keeps its state on disk has them again when it restarts. An address
// outside every pool is an error.
func (p *IPAMPlugin) Restore(pools map[string]netip.Prefix, used []netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, subnet := range pools {
		p.pools[id] = &ipamPool{subnet: subnet, used: map[netip.Addr]bool{}}
	}
	for _, a := range used {
		found := false
		for _, pl := range p.pools {
			if pl.subnet.Contains(a) {
				pl.used[a], found = true, true
			}
		}
		if !found {
			return fmt.Errorf("address %s is in no pool", a)
		}
	}
	return nil
}
