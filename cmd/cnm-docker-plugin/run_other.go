//go:build !linux

package main

import (
	"fmt"
	"runtime"

	"github.com/seed53641549/cnm/errdefs"
)

func run(cfg config, stop <-chan struct{}) error {
	return fmt.Errorf("cnm-docker-plugin needs Linux, not %s: %w", runtime.GOOS, errdefs.ErrNotSupported)
}
