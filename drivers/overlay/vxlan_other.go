//go:build !linux

package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// errNotSupported: VXLAN devices and network namespaces are Linux's.
var errNotSupported = fmt.Errorf("%w: overlay networks need Linux", driverapi.ErrNotSupported)

func addVXLAN(ctx context.Context, host, target *osl.Namespace, spec vxlanSpec) (int, error) {
	return 0, errNotSupported
}

func vxlanMatches(ctx context.Context, ns *osl.Namespace, index int, spec vxlanSpec) (bool, error) {
	return false, errNotSupported
}

// fdb programs a VXLAN device's forwarding database (Linux only).
type fdb struct{}

func openFDB(ns *osl.Namespace) (*fdb, error) { return nil, errNotSupported }

func (f *fdb) set(ctx context.Context, index int, mac net.HardwareAddr, vtep netip.Addr) error {
	return errNotSupported
}

func (f *fdb) del(ctx context.Context, index int, mac net.HardwareAddr, vtep netip.Addr) error {
	return errNotSupported
}

func (f *fdb) list(index int) ([]fdbRecord, error) { return nil, errNotSupported }

func (f *fdb) close() {}
