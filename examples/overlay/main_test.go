package main

import (
	"net/netip"
	"os"
	"testing"
)

// TestDemo runs the demo end to end: etcd, underlay, three hosts, the
// overlay network, a container per host, TCP between every pair, a name
// across hosts, the service's round robin, teardown. Run it in a fresh namespace (etcd listens on
// 127.0.0.1 of the test's own):
//
//	sudo unshare --net --mount -- sh -c 'mount --make-rprivate / && go test ./examples/overlay/'
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	if err := run(netip.MustParsePrefix("10.77.0.0/24")); err != nil {
		t.Fatal(err)
	}
}
