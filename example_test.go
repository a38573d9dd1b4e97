package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/osl"
)

// Example makes a bridge network and one sandbox joined to it, inside a
// throwaway host namespace, and prints what the endpoint got. Run as root.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cnm-example-")
	defer os.RemoveAll(dir)
	host, err := osl.NewNamespace(ctx, filepath.Join(dir, "host"))
	if err != nil {
		panic(err)
	}
	defer host.Delete()

	ctrl, err := cnm.New(cnm.WithHostNamespace(host.Path()), cnm.WithRunDir(dir+"/run"), cnm.WithDataDir(dir+"/data"))
	if err != nil {
		panic(err)
	}
	defer ctrl.Close()
	nw, err := ctrl.NewNetwork(ctx, "bridge", "frontend",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.10.0.0/24")}))
	if err != nil {
		panic(err)
	}
	defer nw.Delete(ctx)
	sb, err := ctrl.NewSandbox(ctx, "container-1", cnm.WithHostname("web"))
	if err != nil {
		panic(err)
	}
	defer sb.Delete(ctx)
	ep, err := nw.CreateEndpoint(ctx, "web")
	if err != nil {
		panic(err)
	}
	if err := ep.Join(ctx, sb); err != nil {
		panic(err)
	}
	info := ep.Info()
	fmt.Println(info.InterfaceName, info.IPv4, "via", info.Gateway)
	// Prints: eth0 10.10.0.2/24 via 10.10.0.1
	// (Not run by go test, as it needs root; TestBridgeTwoSandboxesTalk checks the same.)
}
