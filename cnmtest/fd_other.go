//go:build !linux

package cnmtest

import "testing"

// FD fails the test: namespaces are Linux's.
func (h *HostNS) FD(t testing.TB) int {
	t.Helper()
	t.Fatal("network namespaces need Linux")
	return -1
}
