//go:build !linux

package cnmtest

// unmountUnder does nothing where there are no namespace bind mounts.
func unmountUnder(string) {}
