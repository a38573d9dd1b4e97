//go:build !linux

package overlay

import (
	"fmt"

	"github.com/seed53641549/cnm/driverapi"
)

// errNotSupported: VXLAN devices and network namespaces are Linux's.
var errNotSupported = fmt.Errorf("%w: overlay networks need Linux", driverapi.ErrNotSupported)
