//go:build !linux

package portalloc

import (
	"fmt"
	"runtime"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
)

// bindTest needs network namespaces, which exist on Linux only.
func bindTest(ns *osl.Namespace, b binding) (bindResult, error) {
	return 0, fmt.Errorf("bind test needs Linux, not %s: %w", runtime.GOOS, errdefs.ErrNotSupported)
}
