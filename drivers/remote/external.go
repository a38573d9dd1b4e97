package remote

import (
	"context"
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// ProgramExternalConnectivity sends /NetworkDriver.ProgramExternalConnectivity
// with the endpoint's bound ports under "com.docker.network.portmap" and
// "com.docker.network.endpoint.exposedports": the plugin publishes them.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, req driverapi.ExternalRequest) error {
	var (
		bindings = []protocol.PortBinding{}
		exposed  = []protocol.TransportPort{}
	)
	for _, p := range req.Ports {
		proto, err := protoNumber(p.Proto)
		if err != nil {
			return err
		}
		ip := req.IPv4
		if p.HostIP.Is6() {
			ip = req.IPv6
		}
		b := protocol.PortBinding{Proto: proto, Port: p.ContainerPort, HostPort: p.HostPort, HostPortEnd: p.HostPortEnd}
		if ip.IsValid() {
			b.IP = ip.String()
		}
		if p.HostIP.IsValid() {
			b.HostIP = p.HostIP.String()
		}
		bindings = append(bindings, b)
		exposed = append(exposed, protocol.TransportPort{Proto: proto, Port: p.ContainerPort})
	}
	return d.call(ctx, protocol.PathProgramExternalConnectivity, protocol.ProgramExternalConnectivityRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID,
		Options: map[string]any{protocol.OptionPortMap: bindings, protocol.OptionExposedPorts: exposed},
	}, &protocol.ErrorResponse{})
}

// RevokeExternalConnectivity sends /NetworkDriver.RevokeExternalConnectivity.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, req driverapi.ExternalRequest) error {
	return d.call(ctx, protocol.PathRevokeExternalConnectivity, protocol.RevokeExternalConnectivityRequest{
		NetworkID: req.NetworkID, EndpointID: req.EndpointID,
	}, &protocol.ErrorResponse{})
}

func protoNumber(p string) (int, error) {
	switch p {
	case "tcp":
		return protocol.ProtoTCP, nil
	case "udp":
		return protocol.ProtoUDP, nil
	case "sctp":
		return protocol.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("%w: port protocol %q", driverapi.ErrInvalid, p)
}
