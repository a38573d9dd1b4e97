//go:build !linux

package overlay

import (
	"context"
	"fmt"

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
