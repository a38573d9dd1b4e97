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
