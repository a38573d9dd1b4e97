package osl

import (
	"fmt"
	"net/netip"
)

// Route is one route of the main table.
type Route struct {
	Dst       netip.Prefix // the default route is 0.0.0.0/0 or ::/0
	Gateway   netip.Addr   // zero: a directly connected route
	LinkIndex int
}

// String renders the route the way `ip route` does.
func (r Route) String() string {
	s := r.Dst.String()
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	return fmt.Sprintf("%s dev %d", s, r.LinkIndex)
}
