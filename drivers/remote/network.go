package remote

import (
	"context"
	"fmt"
	"maps"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// localAddressSpace is Docker's name of the local address space, sent with
// each pool.
const localAddressSpace = "LocalDefault"

// CreateNetwork sends /NetworkDriver.CreateNetwork: the driver options under
// "com.docker.network.generic", "com.docker.network.enable_ipv6",
// "com.docker.network.internal", and the pools with their gateway and aux
// addresses. The plugin validates the options.
func (d *Driver) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	generic := maps.Clone(req.Options)
	if generic == nil {
		generic = map[string]string{}
	}
	return d.call(ctx, protocol.PathCreateNetwork, protocol.CreateNetworkRequest{
		NetworkID: req.ID,
		Options: map[string]any{
			protocol.OptionGeneric:    generic,
			protocol.OptionEnableIPv6: req.IPv6 != nil,
			protocol.OptionInternal:   req.Internal,
		},
		IPv4Data: ipamData(req.IPv4),
		IPv6Data: ipamData(req.IPv6),
	}, &protocol.ErrorResponse{})
}

// ipamData describes one family's pool; nil for a family the network lacks.
func ipamData(p *driverapi.IPAMData) []protocol.IPAMData {
	if p == nil {
		return nil
	}
	out := protocol.IPAMData{AddressSpace: localAddressSpace, Pool: p.Pool.String()}
	if p.Gateway.IsValid() {
		out.Gateway = p.Gateway.String()
	}
	if len(p.AuxAddresses) > 0 {
		out.AuxAddresses = map[string]string{}
		for k, a := range p.AuxAddresses {
			out.AuxAddresses[k] = netip.PrefixFrom(a, p.Pool.Bits()).String()
		}
	}
	return []protocol.IPAMData{out}
}

// DeleteNetwork sends /NetworkDriver.DeleteNetwork.
func (d *Driver) DeleteNetwork(ctx context.Context, networkID string) error {
	return d.call(ctx, protocol.PathDeleteNetwork, protocol.DeleteNetworkRequest{NetworkID: networkID}, &protocol.ErrorResponse{})
}

// AllocateNetwork sends /NetworkDriver.AllocateNetwork, the call a cluster
// manager makes once for a global network before any host creates it, and
// returns the options the plugin wants passed to every host's
// CreateNetwork (as driver options). cnm's controller does not call it.
func (d *Driver) AllocateNetwork(ctx context.Context, req driverapi.NetworkRequest) (map[string]string, error) {
	var resp protocol.AllocateNetworkResponse
	err := d.call(ctx, protocol.PathAllocateNetwork, protocol.AllocateNetworkRequest{
		NetworkID: req.ID, Options: maps.Clone(req.Options), IPv4Data: ipamData(req.IPv4), IPv6Data: ipamData(req.IPv6),
	}, &resp)
	if err != nil {
		return nil, err
	}
	return resp.Options, nil
}

// FreeNetwork sends /NetworkDriver.FreeNetwork, undoing AllocateNetwork.
func (d *Driver) FreeNetwork(ctx context.Context, networkID string) error {
	return d.call(ctx, protocol.PathFreeNetwork, protocol.FreeNetworkRequest{NetworkID: networkID}, &protocol.ErrorResponse{})
}

// DiscoverNew sends /NetworkDriver.DiscoverNew: a host joined the cluster.
// cnm's controller does not call it yet (it has no multi-host discovery).
func (d *Driver) DiscoverNew(ctx context.Context, n protocol.DiscoveryNotification) error {
	if n.DiscoveryType == 0 {
		return fmt.Errorf("%w: DiscoveryType 0", driverapi.ErrInvalid)
	}
	return d.call(ctx, protocol.PathDiscoverNew, n, &protocol.ErrorResponse{})
}

// DiscoverDelete sends /NetworkDriver.DiscoverDelete: a host left.
func (d *Driver) DiscoverDelete(ctx context.Context, n protocol.DiscoveryNotification) error {
	if n.DiscoveryType == 0 {
		return fmt.Errorf("%w: DiscoveryType 0", driverapi.ErrInvalid)
	}
	return d.call(ctx, protocol.PathDiscoverDelete, n, &protocol.ErrorResponse{})
}
