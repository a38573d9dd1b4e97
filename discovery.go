package cnm

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/seed53641549/cnm/resolver"
)

// Service discovery: every sandbox joined to a network with interfaces gets
// an embedded DNS server at 127.0.0.11 inside its own namespace (package
// resolver), started at its first such join and stopped with the sandbox.
// It answers the names of the endpoints on the networks the sandbox shares
// with them, and only those: an endpoint's name, its aliases and its
// sandbox's host name. Everything else goes to the sandbox's upstream
// servers, unless all of its networks are internal.
//
// Each network keeps its names in an index (nameindex.go), fed by
// joins and leaves. The sandbox's view (sandboxNames) asks the index of
// each of its networks, so a name on two shared networks answers both
// addresses. A network whose peers live on other hosts feeds the same
// index from its peer table.

// publishNames adds a joined endpoint's names to its network's index, and
// withdrawNames removes them.
func (ep *Endpoint) publishNames(sb *Sandbox) {
	if !ep.nw.hasDiscovery() {
		return
	}
	ep.nw.names.add(ep.id, ep.dnsNames(sb), addrsOf(ep.ipv4, ep.ipv6))
}

func (ep *Endpoint) withdrawNames() { ep.nw.names.remove(ep.id) }

// addrsOf returns the addresses of the valid prefixes among ps.
func addrsOf(ps ...netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// hasDiscovery reports whether the network's endpoints take part in
// service discovery: those of drivers that give them an interface, except
// on the gateway bridge network (egress.go).
func (n *Network) hasDiscovery() bool {
	return !n.driver.Capability().NoInterface && !n.isEgress()
}

// sandboxNames is the resolver's view of one sandbox: the names on the
// networks it is joined to.
type sandboxNames struct{ sb *Sandbox }

var _ resolver.Names = sandboxNames{}

// networks returns the sandbox's networks with discovery.
func (v sandboxNames) networks() []*Network {
	var out []*Network
	for _, ep := range v.sb.Endpoints() {
		if ep.nw.hasDiscovery() && !slices.Contains(out, ep.nw) {
			out = append(out, ep.nw)
		}
	}
	return out
}

// Lookup answers a name from the sandbox's networks.
func (v sandboxNames) Lookup(name string, ipv6 bool) ([]netip.Addr, bool) {
	var out []netip.Addr
	found := false
	for _, n := range v.networks() {
		addrs, ok := n.names.lookup(name, ipv6)
		found = found || ok
		out = append(out, addrs...)
	}
	return out, found
}

// Reverse answers an address from the sandbox's networks.
func (v sandboxNames) Reverse(addr netip.Addr) ([]string, bool) {
	var out []string
	for _, n := range v.networks() {
		out = append(out, n.names.reverse(addr)...)
	}
	return out, len(out) > 0
}

// resolverConfig is the sandbox's resolver configuration for the
// endpoints eps: forwarding to its upstream servers unless every network
// with discovery among them is internal.
func (sb *Sandbox) resolverConfig(eps []*Endpoint) resolver.Config {
	forward := false
	for _, ep := range eps {
		forward = forward || (ep.nw.hasDiscovery() && !ep.nw.internal)
	}
	var ups []netip.AddrPort
	for _, s := range sb.upstreams() {
		ups = append(ups, netip.AddrPortFrom(s, 53))
	}
	return resolver.Config{Names: sandboxNames{sb}, Upstreams: ups, Forward: forward}
}

// upstreams returns the name servers the sandbox's queries for other names
// go to: WithDNS, else the host's (minus loopback ones), else the fallback.
func (sb *Sandbox) upstreams() []netip.Addr {
	servers, _ := sb.nameServers()
	return servers
}

// updateResolver starts the sandbox's resolver when eps (its endpoints as
// they are about to be) include one with discovery, and points resolv.conf
// at it; a running one gets the configuration for eps. It reports whether
// it started one. A host-network sandbox gets none: it is the host's own
// stack. The caller holds sb.joinMu.
func (sb *Sandbox) updateResolver(eps []*Endpoint) (started bool, err error) {
	if sb.cfg.hostNetwork {
		return false, nil
	}
	sb.mu.Lock()
	srv := sb.resolver
	sb.mu.Unlock()
	if srv != nil {
		srv.Update(sb.resolverConfig(eps))
		return false, nil
	}
	if !slices.ContainsFunc(eps, func(ep *Endpoint) bool { return ep.nw.hasDiscovery() }) {
		return false, nil
	}
	srv, err = resolver.Start(sb.ns, sb.resolverConfig(eps))
	if err != nil {
		return false, fmt.Errorf("start the embedded DNS server: %w", err)
	}
	sb.mu.Lock()
	sb.resolver = srv
	sb.mu.Unlock()
	if err := sb.writeResolvConf(); err != nil {
		sb.stopResolver()
		return false, err
	}
	return true, nil
}

// stopResolver stops the sandbox's resolver, if it runs.
func (sb *Sandbox) stopResolver() {
	sb.mu.Lock()
	srv := sb.resolver
	sb.resolver = nil
	sb.mu.Unlock()
	if srv != nil {
		if err := srv.Close(); err != nil {
			sb.ctrl.log.Warn("cnm: stop the embedded DNS server", "sandbox", sb.containerID, "err", err)
		}
	}
}

// dnsNames returns the names an endpoint answers to on its network, lower
// case: its name, its aliases, its sandbox's host name and, for a backend
// of a service, tasks.<service> (and, on a global network, where services
// have no VIP, the service's name: see [WithService]). Each name is there
// once, so that round robin gives the endpoint one turn.
func (ep *Endpoint) dnsNames(sb *Sandbox) []string {
	names := []string{strings.ToLower(ep.name)}
	for _, a := range ep.aliases {
		names = append(names, strings.ToLower(a))
	}
	if h := sb.cfg.hostname; h != "" {
		names = append(names, strings.ToLower(h))
	}
	if ep.service != "" {
		names = append(names, "tasks."+strings.ToLower(ep.service))
		if ep.nw.global {
			names = append(names, strings.ToLower(ep.service))
		}
	}
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
