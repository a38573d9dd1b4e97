//go:build !linux

package cnm

// closeFD is never called off Linux, where New fails before it opens anything.
func closeFD(fd int) error { return ErrNotSupported }
