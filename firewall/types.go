package firewall

import "net/netip"

// Network is what the firewall needs to know about one bridge network.
type Network struct {
	// ID identifies the network; every rule of the network carries it (as the
	// rule comment "cnm:<ID>") so the rules can be found and removed. 1 to 64
	// characters of [a-zA-Z0-9_.-].
	ID string
	// Bridge is the bridge interface name in the host namespace: 1 to 15
	// printable ASCII characters, no '/', ':' or space, not "." or "..". Each
	// network needs its own bridge.
	Bridge string
	// Subnets are the network's IPv4 and/or IPv6 subnets, without host bits
	// (10.0.0.0/24, not 10.0.0.1/24). They are used only for Masquerade; none is
	// fine for a network that does not masquerade.
	Subnets []netip.Prefix
	// Masquerade masquerades traffic from Subnets leaving through any interface
	// other than Bridge. Ignored for an Internal network.
	Masquerade bool
	// ICC accepts traffic between two ports of the bridge that br_netfilter
	// passes to the forward hook. Without it such traffic is dropped. This
	// alone does not stop containers on one bridge from talking to each
	// other: the caller isolates the bridge's ports (see the package doc).
	ICC bool
	// Internal allows no traffic in or out of the bridge except between its own
	// ports (if ICC) and to/from the host itself.
	Internal bool
}

// Port is one published port: traffic to HostIP:HostPort over Proto goes to
// ContainerIP:ContainerPort, a container on bridge Bridge.
//
// The firewall holds each port as one element of an nftables map, keyed by
// (Proto, HostIP, HostPort): two ports with the same key cannot coexist, and
// [Firewall.RemovePorts] finds a port by its key alone.
type Port struct {
	// NetworkID is the network the port belongs to; the port's element
	// carries it (as the comment "cnm:<NetworkID> <Bridge>"), so that
	// [Firewall.RemoveNetwork] removes the network's ports too, and
	// [Firewall.Ports] reports it after a restart. Same rules as [Network.ID].
	NetworkID string
	// Bridge is the bridge the container is on, recorded with the port for
	// [Firewall.Ports]. Same rules as [Network.Bridge].
	Bridge string
	// Proto is "tcp", "udp" or "sctp".
	Proto string
	// HostIP is the address the port is published on. The unspecified
	// address (0.0.0.0 or ::) means every local address of its family,
	// 127.0.0.1 included (the bridge then needs route_localnet, see the
	// package doc). ::1 cannot be published: the kernel never routes a
	// packet from ::1 out of the host.
	HostIP   netip.Addr
	HostPort uint16 // 1 to 65535
	// ContainerIP is the container's address, of the same family as HostIP.
	ContainerIP   netip.Addr
	ContainerPort uint16 // 1 to 65535
}

// String returns the port as "tcp 0.0.0.0:8080 -> 198.18.1.2:80".
func (p Port) String() string {
	return p.Proto + " " + netip.AddrPortFrom(p.HostIP, p.HostPort).String() + " -> " +
		netip.AddrPortFrom(p.ContainerIP, p.ContainerPort).String()
}

// Service is one service virtual IP and the addresses of its live backends,
// as [Services] programs it in a client's namespace. New connections to
// VIP are spread over Backends in turn; with no backend, they are refused.
type Service struct {
	// VIP is the service's virtual IP: an IPv4 or IPv6 address, no zone.
	VIP netip.Addr
	// Backends are the live backends' addresses, of VIP's family, each once.
	Backends []netip.Addr
}
