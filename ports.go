package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/portalloc"
)

// PortMapping publishes one port of the endpoint on the host, as Docker's
// `-p [HostIP:][HostPort[-HostPortEnd]:]ContainerPort[/Proto]` does:
//
//   - HostIP zero: every address of the host, in each address family the
//     network has (0.0.0.0 and ::); a specific address: that one only;
//   - HostPort zero: an ephemeral port (see [WithEphemeralPorts]); with
//     HostPortEnd, the first free port of HostPort..HostPortEnd.
//
// While the endpoint is joined, [Endpoint.Info] reports the ports bound:
// one mapping per address family, with the host port chosen.
type PortMapping = driverapi.PortMapping

// ExposedPort is a port a container listens on, to publish on an
// ephemeral host port ([WithExposedPorts]).
type ExposedPort struct {
	Proto string // "tcp", "udp" or "sctp"
	Port  uint16
}

// WithEphemeralPorts sets the range of host ports that port mappings
// without a host port take theirs from. Default: 49153-65535, Docker's.
func WithEphemeralPorts(first, last uint16) Option {
	return func(c *config) error {
		if first == 0 || last < first {
			return fmt.Errorf("%w: ephemeral ports %d-%d: want 1 <= first <= last", ErrInvalid, first, last)
		}
		c.ephemeralPorts = portalloc.Range{First: first, Last: last}
		return nil
	}
}

// WithPortMappings publishes ports of the endpoint on the host when it
// joins a sandbox. Each mapping is checked here (protocol, ports, range,
// address); CreateEndpoint then refuses mappings its network cannot serve:
// a driver that publishes no ports (macvlan and ipvlan endpoints are
// reachable directly; host and null have no interface), or an IPv6 host
// address on a network without IPv6. The host ports are taken at Join: one
// in use there is an error wrapping [ErrInUse].
func WithPortMappings(ports ...PortMapping) EndpointOption {
	return func(o *endpointConfig) error {
		for _, p := range ports {
			if err := checkPortMapping(p); err != nil {
				return err
			}
		}
		o.ports = append(o.ports, ports...)
		return checkDuplicatePorts(o.ports)
	}
}

// WithExposedPorts publishes each port on an ephemeral host port of every
// host address, as `docker run -P` does for a container's exposed ports.
func WithExposedPorts(ports ...ExposedPort) EndpointOption {
	return func(o *endpointConfig) error {
		for _, e := range ports {
			p := PortMapping{Proto: e.Proto, ContainerPort: e.Port}
			if err := checkPortMapping(p); err != nil {
				return err
			}
			o.ports = append(o.ports, p)
		}
		return nil
	}
}

// ParsePortMapping parses Docker's `-p` syntax:
// `[HostIP:][HostPort[-HostPortEnd]:]ContainerPort[/Proto]`, an IPv6 host
// address in brackets ("[::1]:8080:80"), the protocol tcp by default.
func ParsePortMapping(s string) (PortMapping, error) {
	bad := func(why string) (PortMapping, error) {
		return PortMapping{}, fmt.Errorf("%w: port mapping %q: %s", ErrInvalid, s, why)
	}
	rest := s
	p := PortMapping{Proto: "tcp"}
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		p.Proto, rest = rest[i+1:], rest[:i]
	}
	var host string
	if strings.HasPrefix(rest, "[") {
		i := strings.Index(rest, "]:")
		if i < 0 {
			return bad("an IPv6 host address in brackets must be followed by ':'")
		}
		host, rest = rest[1:i], rest[i+2:]
		if host == "" {
			return bad("empty host address")
		}
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) > 3, len(parts) == 3 && host != "":
		return bad("want [ip:][host port[-end]:]container port[/proto]")
	case len(parts) == 3:
		host, parts = parts[0], parts[1:]
	}
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return bad(fmt.Sprintf("host address %q: %v", host, err))
		}
		p.HostIP = a
	}
	if len(parts) == 2 && parts[0] != "" {
		first, last, isRange := strings.Cut(parts[0], "-")
		var err error
		if p.HostPort, err = parsePort("host port", first); err != nil {
			return bad(err.Error())
		}
		if isRange {
			if p.HostPortEnd, err = parsePort("host port range end", last); err != nil {
				return bad(err.Error())
			}
		}
	}
	cp, err := parsePort("container port", parts[len(parts)-1])
	if err != nil {
		return bad(err.Error())
	}
	p.ContainerPort = cp
	if err := checkPortMapping(p); err != nil {
		return PortMapping{}, fmt.Errorf("port mapping %q: %w", s, err)
	}
	return p, nil
}

func parsePort(field, s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("%s %q: want 1-65535", field, s)
	}
	return uint16(n), nil
}

// checkPortMapping checks one mapping on its own.
func checkPortMapping(p PortMapping) error {
	switch p.Proto {
	case "tcp", "udp", "sctp":
	default:
		return fmt.Errorf("%w: port mapping proto %q: want tcp, udp or sctp", ErrInvalid, p.Proto)
	}
	if p.ContainerPort == 0 {
		return fmt.Errorf("%w: port mapping %s: container port 0", ErrInvalid, p.Proto)
	}
	if p.HostPortEnd != 0 {
		if p.HostPort == 0 {
			return fmt.Errorf("%w: port mapping %s: host port range end %d without a start", ErrInvalid, p.Proto, p.HostPortEnd)
		}
		if p.HostPortEnd < p.HostPort {
			return fmt.Errorf("%w: port mapping %s: host port range %d-%d ends below its start", ErrInvalid, p.Proto, p.HostPort, p.HostPortEnd)
		}
	}
	if p.HostIP.IsValid() {
		if err := noZone("port mapping host address", p.HostIP); err != nil {
			return err
		}
		if p.HostIP.Is4In6() {
			return fmt.Errorf("%w: port mapping host address %s: an IPv4-mapped address; give the IPv4 address", ErrInvalid, p.HostIP)
		}
	}
	return nil
}

// checkDuplicatePorts refuses one host port asked for twice.
func checkDuplicatePorts(ports []PortMapping) error {
	type key struct {
		proto string
		ip    netip.Addr
		port  uint16
	}
	seen := map[key]bool{}
	for _, p := range ports {
		if p.HostPort == 0 || p.HostPortEnd != 0 {
			continue
		}
		k := key{p.Proto, p.HostIP, p.HostPort}
		if seen[k] {
			return fmt.Errorf("%w: port mapping %s: host port %d asked for twice", ErrInvalid, portString(p), p.HostPort)
		}
		seen[k] = true
	}
	return nil
}

// hostAddr writes a host address for messages: "*" for none (every
// address), IPv6 in brackets.
func hostAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "*"
	case a.Is6():
		return "[" + a.String() + "]"
	}
	return a.String()
}

// checkPorts refuses mappings the network cannot serve.
func (n *Network) checkPorts(ports []PortMapping) error {
	if len(ports) == 0 {
		return nil
	}
	if _, ok := n.driver.(driverapi.ExternalConnector); !ok {
		return fmt.Errorf("%w: port mappings: the %s driver publishes no ports (its endpoints are reachable directly, or have no interface)", ErrInvalid, n.driver.Type())
	}
	if n.internal {
		return fmt.Errorf("%w: port mappings: network %q is internal: nothing from outside reaches it", ErrInvalid, n.name)
	}
	for _, p := range ports {
		if !p.HostIP.IsValid() {
			continue
		}
		fam, name := n.ipv4, "IPv4"
		if p.HostIP.Is6() {
			fam, name = n.ipv6, "IPv6"
		}
		if fam == nil || fam.null {
			return fmt.Errorf("%w: port mapping host address %s: network %q has no %s", ErrInvalid, p.HostIP, n.name, name)
		}
	}
	return nil
}

// bindPorts takes the host ports of the endpoint's mappings: for each, one
// binding per address family (the same port in both). want, if set, are
// the bindings to take again (a rollback republishing what it revoked). On
// error nothing stays taken.
func (ep *Endpoint) bindPorts(ctx context.Context, want []PortMapping) (_ []PortMapping, retErr error) {
	alloc := ep.nw.ctrl.ports
	var out []PortMapping
	defer func() {
		if retErr != nil {
			releasePorts(alloc, out)
		}
	}()
	if want != nil {
		for _, b := range want {
			if _, err := alloc.Allocate(ctx, portalloc.Request{Proto: b.Proto, HostIP: b.HostIP, Port: b.HostPort}); err != nil {
				return nil, fmt.Errorf("publish container port %d: %w", b.ContainerPort, err)
			}
			out = append(out, b)
		}
		return out, nil
	}
	for _, m := range ep.ports {
		var ips []netip.Addr
		switch {
		case m.HostIP.IsValid():
			ips = []netip.Addr{m.HostIP}
		default:
			if ep.ipv4.IsValid() {
				ips = append(ips, netip.IPv4Unspecified())
			}
			if ep.ipv6.IsValid() {
				ips = append(ips, netip.IPv6Unspecified())
			}
		}
		req := portalloc.Request{Proto: m.Proto, Port: m.HostPort, PortEnd: m.HostPortEnd}
		for i, ip := range ips {
			req.HostIP = ip
			port, err := alloc.Allocate(ctx, req)
			if err != nil {
				return nil, fmt.Errorf("publish container port %d: %w", m.ContainerPort, err)
			}
			out = append(out, PortMapping{Proto: m.Proto, HostIP: ip, HostPort: port, ContainerPort: m.ContainerPort})
			if i == 0 { // the other family gets the same port
				req.Port, req.PortEnd = port, 0
			}
		}
	}
	return out, nil
}

func releasePorts(alloc *portalloc.Allocator, bindings []PortMapping) {
	for _, b := range bindings {
		alloc.Release(b.Proto, b.HostIP, b.HostPort)
	}
}

// portString writes a mapping as `-p` would, with its protocol first:
// "tcp 0.0.0.0:8080->80", "udp [::1]:9000-9010->53", "tcp *:0->80".
func portString(p PortMapping) string {
	host := strconv.Itoa(int(p.HostPort))
	if p.HostPortEnd != 0 {
		host += "-" + strconv.Itoa(int(p.HostPortEnd))
	}
	return fmt.Sprintf("%s %s:%s->%d", p.Proto, hostAddr(p.HostIP), host, p.ContainerPort)
}

// externalRequest describes the endpoint's bound ports to its driver.
func (ep *Endpoint) externalRequest(bindings []PortMapping) driverapi.ExternalRequest {
	return driverapi.ExternalRequest{NetworkID: ep.nw.id, EndpointID: ep.id, IPv4: ep.ipv4.Addr(), IPv6: ep.ipv6.Addr(), Ports: bindings}
}

// programExternal publishes the endpoint's ports: it takes the host ports
// and has the driver program them. A rollback (Leave or Sandbox.Delete
// that failed after revokeExternal) takes back the same bindings.
func (ep *Endpoint) programExternal(ctx context.Context) error {
	if len(ep.ports) == 0 {
		return nil
	}
	ep.mu.Lock()
	want := ep.bindings
	ep.mu.Unlock()
	bindings, err := ep.bindPorts(ctx, want)
	if err != nil {
		return err
	}
	ec := ep.nw.driver.(driverapi.ExternalConnector) // checked at CreateEndpoint
	if err := ec.ProgramExternalConnectivity(ctx, ep.externalRequest(bindings)); err != nil {
		releasePorts(ep.nw.ctrl.ports, bindings)
		return err
	}
	ep.mu.Lock()
	ep.bindings, ep.external = bindings, true
	ep.mu.Unlock()
	return nil
}

// revokeExternal withdraws published ports, if any were programmed, and
// frees their host ports. The bindings stay in the join state, for a
// rollback; a Leave that commits drops them with it.
func (ep *Endpoint) revokeExternal(ctx context.Context) error {
	ep.mu.Lock()
	programmed, bindings := ep.external, ep.bindings
	ep.mu.Unlock()
	if !programmed {
		return nil
	}
	ec := ep.nw.driver.(driverapi.ExternalConnector)
	if err := ec.RevokeExternalConnectivity(ctx, ep.externalRequest(bindings)); err != nil {
		return err
	}
	releasePorts(ep.nw.ctrl.ports, bindings)
	ep.mu.Lock()
	ep.external = false
	ep.mu.Unlock()
	return nil
}
