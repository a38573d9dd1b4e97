package cnm

import (
	"context"
	"net/netip"
)

// hostPrefixes returns what a subnet picked from the default pools must not
// overlap: the host namespace's routes (but its default routes) and
// addresses, and the name servers of the host's resolv.conf. A container
// subnet that collides with the LAN, a VPN or the DNS server is the most
// common complaint about Docker's choice of pools.
func (c *Controller) hostPrefixes(ctx context.Context) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, family := range []int{4, 6} {
		routes, err := c.hostNS.Routes(ctx, family)
		if err != nil {
			return nil, err
		}
		for _, r := range routes {
			if r.Dst.Bits() > 0 && !r.Dst.Addr().IsLinkLocalUnicast() && !r.Dst.Addr().IsMulticast() {
				out = append(out, r.Dst.Masked())
			}
		}
	}
	addrs, err := c.hostNS.Addresses(ctx, 0)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if !a.Addr().IsLoopback() && !a.Addr().IsLinkLocalUnicast() {
			out = append(out, a.Masked())
		}
	}
	servers, _ := readHostResolvConf(hostResolvConf)
	for _, s := range servers {
		out = append(out, netip.PrefixFrom(s, s.BitLen()))
	}
	return out, nil
}
