//go:build !linux

package osl

import (
	"context"
	"net/netip"
)

func (ns *Namespace) DeleteConntrack(ctx context.Context, proto string, dst netip.Addr, dport uint16) (int, error) {
	return 0, errNotSupported
}

func (ns *Namespace) DeleteConntracks(ctx context.Context, matches ...ConntrackMatch) (int, error) {
	return 0, errNotSupported
}

// ConntrackMatch selects conntrack entries by their original destination.
type ConntrackMatch struct {
	Proto string
	Dst   netip.Addr
	Port  uint16
}
