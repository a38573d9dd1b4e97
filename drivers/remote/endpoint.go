package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// CreateEndpoint sends /NetworkDriver.CreateEndpoint with the endpoint's
// addresses and MAC, which cnm assigned. A plugin may echo them in its
// answer but not choose others: then the endpoint is deleted in the plugin
// again and the error, wrapping errdefs.ErrNotSupported, names the field and
// both values.
func (d *Driver) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	sent := &protocol.EndpointInterface{}
	if req.IPv4.IsValid() {
		sent.Address = req.IPv4.String()
	}
	if req.IPv6.IsValid() {
		sent.AddressIPv6 = req.IPv6.String()
	}
	opts := map[string]any{}
	if req.MAC != nil {
		sent.MacAddress = req.MAC.String()
		opts[protocol.OptionMACAddress] = req.MAC.String()
	}
	var resp protocol.CreateEndpointResponse
	if err := d.call(ctx, protocol.PathCreateEndpoint, protocol.CreateEndpointRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID, Interface: sent, Options: opts,
	}, &resp); err != nil {
		return err
	}
	if err := checkInterface(sent, resp.Interface); err != nil {
		err = d.refuse(protocol.PathCreateEndpoint, err)
		if derr := d.DeleteEndpoint(context.WithoutCancel(ctx), req.NetworkID, req.EndpointID); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
		return err
	}
	return nil
}

// checkInterface refuses an answer that changes what cnm assigned.
func checkInterface(sent, got *protocol.EndpointInterface) error {
	if got == nil {
		return nil
	}
	for _, f := range []struct {
		field, sent, got string
		same             func(a, b string) bool
	}{
		{"Interface.Address", sent.Address, got.Address, samePrefix},
		{"Interface.AddressIPv6", sent.AddressIPv6, got.AddressIPv6, samePrefix},
		{"Interface.MacAddress", sent.MacAddress, got.MacAddress, sameMAC},
	} {
		if f.got == "" || f.same(f.sent, f.got) {
			continue
		}
		return fmt.Errorf("%w: %w: answer sets %s %q, but cnm assigned %q: addresses and MACs come from cnm",
			plugin.ErrProtocol, driverapi.ErrNotSupported, f.field, f.got, f.sent)
	}
	return nil
}

func samePrefix(a, b string) bool {
	pa, err1 := netip.ParsePrefix(a)
	pb, err2 := netip.ParsePrefix(b)
	return err1 == nil && err2 == nil && pa == pb
}

func sameMAC(a, b string) bool {
	ma, err1 := net.ParseMAC(a)
	mb, err2 := net.ParseMAC(b)
	return err1 == nil && err2 == nil && ma.String() == mb.String()
}

// DeleteEndpoint sends /NetworkDriver.DeleteEndpoint.
func (d *Driver) DeleteEndpoint(ctx context.Context, networkID, endpointID string) error {
	d.mu.Lock()
	delete(d.endpoints, epKey{networkID, endpointID})
	d.mu.Unlock()
	return d.call(ctx, protocol.PathDeleteEndpoint, protocol.DeleteEndpointRequest{NetworkID: networkID, EndpointID: endpointID}, &protocol.ErrorResponse{})
}

// EndpointOperInfo sends /NetworkDriver.EndpointOperInfo and returns what
// the plugin reports about the endpoint. It changes nothing, so it is
// retried when the connection breaks.
func (d *Driver) EndpointOperInfo(ctx context.Context, networkID, endpointID string) (map[string]any, error) {
	var resp protocol.EndpointInfoResponse
	if err := d.call(ctx, protocol.PathEndpointOperInfo, protocol.EndpointInfoRequest{NetworkID: networkID, EndpointID: endpointID}, &resp); err != nil {
		return nil, err
	}
	return resp.Value, nil
}
