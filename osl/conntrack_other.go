//go:build !linux

package osl

import (
	"context"
	"net/netip"
)

func (ns *Namespace) DeleteConntrack(ctx context.Context, proto string, dst netip.Addr, dport uint16) (int, error) {
	return 0, errNotSupported
}
