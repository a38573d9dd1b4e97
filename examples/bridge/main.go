// Command bridge is cnm's main demo: it builds a bridge network with two
// sandboxes, proves TCP between them both ways, prints what it built and
// removes everything again.
//
// By default it works inside a throwaway host namespace of its own, so the
// machine's real network is never touched. With -host it uses the real host
// namespace instead, as a container runtime would.
//
//	sudo ./scripts/demo.sh         # or: go build ./examples/bridge && sudo ./bridge
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

func main() {
	onHost := flag.Bool("host", false, "use the real host namespace instead of a throwaway one")
	subnet := flag.String("subnet", "10.89.0.0/24", "subnet of the demo network")
	flag.Parse()
	if err := run(*onHost, netip.MustParsePrefix(*subnet)); err != nil {
		log.Fatal(err)
	}
}

func run(onHost bool, subnet netip.Prefix) error {
	ctx := context.Background()
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo makes network namespaces and links: run it as root")
	}

	// 1. A controller, in a throwaway host namespace unless -host.
	var opts []cnm.Option
	where := "the real host namespace"
	if !onHost {
		dir, err := os.MkdirTemp("", "cnm-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		hostNS, err := osl.NewNamespace(ctx, filepath.Join(dir, "host"))
		if err != nil {
			return err
		}
		defer hostNS.Delete()
		opts = []cnm.Option{
			cnm.WithHostNamespace(hostNS.Path()),
			cnm.WithRunDir(filepath.Join(dir, "run")),
			cnm.WithDataDir(filepath.Join(dir, "data")),
		}
		where = "a throwaway host namespace, " + hostNS.Path()
	}
	ctrl, err := cnm.New(opts...)
	if err != nil {
		return err
	}
	defer ctrl.Close()

	// 2. A bridge network.
	nw, err := ctrl.NewNetwork(ctx, "bridge", "demo",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "cnm-demo0"}),
	)
	if err != nil {
		return err
	}
	defer nw.Delete(ctx)
	v4, _ := nw.IPv4()
	fmt.Printf("cnm bridge demo in %s\n", where)
	fmt.Printf("network %q: bridge cnm-demo0, subnet %s, gateway %s\n\n", nw.Name(), v4.Subnet, v4.Gateway)

	// 3. Two sandboxes, one endpoint each, joined.
	type box struct {
		sb *cnm.Sandbox
		ep *cnm.Endpoint
	}
	var boxes []box
	for _, name := range []string{"web", "client"} {
		start := time.Now()
		sb, err := ctrl.NewSandbox(ctx, name, cnm.WithHostname(name))
		if err != nil {
			return err
		}
		defer sb.Delete(ctx) // also deletes its endpoint
		ep, err := nw.CreateEndpoint(ctx, name)
		if err != nil {
			return err
		}
		if err := ep.Join(ctx, sb); err != nil {
			return err
		}
		fmt.Printf("sandbox %-6s ready in %v (namespace %s)\n", name, time.Since(start).Round(10*time.Microsecond), sb.Key())
		boxes = append(boxes, box{sb, ep})
	}
	fmt.Println()

	// 4. TCP both ways: listen in one sandbox, dial from the other.
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tINTERFACE\tADDRESS\tGATEWAY\tTCP FROM PEER")
	failed := false
	for i, b := range boxes {
		peer := boxes[1-i]
		info := b.ep.Info()
		to := netip.AddrPortFrom(info.IPv4.Addr(), 8080)
		start := time.Now()
		result := "ok"
		if err := cnmtest.TCPExchange(ctx, b.sb.Key(), peer.sb.Key(), to, 2*time.Second); err != nil {
			result, failed = "FAILED: "+err.Error(), true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s -> %s: %s (%v)\n", b.sb.ContainerID(), info.InterfaceName, info.IPv4, info.Gateway,
			peer.sb.ContainerID(), to, result, time.Since(start).Round(10*time.Microsecond))
	}
	tw.Flush()
	if failed {
		return fmt.Errorf("connectivity check failed")
	}
	fmt.Println("\nall checks passed; removing sandboxes, endpoints and the network")
	return nil
}
