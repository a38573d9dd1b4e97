package cnm

// WithoutHostSysctls makes the controller write no sysctl of its host
// namespace, for a runtime that manages them itself. Making or restoring a
// bridge network that routes out of its bridge while IP forwarding is off
// then fails with an error that names the sysctl (net.ipv4.ip_forward, and
// net.ipv6.conf.all.forwarding for a network with IPv6) and matches
// [ErrNotSupported]. Internal networks need neither.
//
// Default: such a network turns net.ipv4.ip_forward on in the host
// namespace, and one with IPv6 net.ipv6.conf.all.forwarding too, after
// setting accept_ra=2 on every interface whose accept_ra is 1 (with
// forwarding on, the kernel ignores router advertisements at 1, and a host
// configured by SLAAC would lose its default route). A create that fails
// puts back what it changed; otherwise forwarding stays on, as Docker
// leaves it.
func WithoutHostSysctls() Option {
	return func(c *config) error {
		c.leaveHostSysctls = true
		return nil
	}
}
