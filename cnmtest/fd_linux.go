package cnmtest

import (
	"testing"

	"golang.org/x/sys/unix"
)

// FD returns a descriptor of the host namespace (for a firewall.New or a
// netlink handle), closed when the test ends. It fails the test if the
// namespace cannot be opened.
func (h *HostNS) FD(t testing.TB) int {
	t.Helper()
	fd, err := h.NS.FD()
	if err != nil {
		t.Fatalf("open host namespace %s: %v", h.Path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
