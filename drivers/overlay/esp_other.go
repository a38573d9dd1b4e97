//go:build !linux

package overlay

import (
	"context"
	"time"
)

// probeESP finds out whether the kernel carries ESP: xfrm is Linux's, so
// off Linux it reports errNotSupported (the Linux build documents it).
func probeESP(ctx context.Context, dir string, timeout time.Duration) (espAnswer, error) {
	return espAnswer{}, errNotSupported
}
