//go:build !linux

package plugintest

import (
	"context"
	"fmt"
	"runtime"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
)

// StartBridge needs Linux.
func StartBridge(ctx context.Context, socket string, host *osl.Namespace) (*BridgePlugin, error) {
	return nil, fmt.Errorf("plugintest: the bridge plugin needs Linux, not %s: %w", runtime.GOOS, errdefs.ErrNotSupported)
}
