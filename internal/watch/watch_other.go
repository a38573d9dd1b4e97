//go:build !linux

package watch

import (
	"fmt"
	"runtime"
)

// Watcher runs the watches of [Start] until Close (Linux only).
type Watcher struct{}

// Start fails off Linux: there is no netlink.
func Start(cfg Config, out func(Change)) (*Watcher, error) {
	return nil, fmt.Errorf("watch: netlink exists on Linux only, not on %s", runtime.GOOS)
}

// Close does nothing.
func (w *Watcher) Close() error { return nil }
