// Command macvlan is cnm's macvlan demo: it puts two containers directly on
// a "physical" network, proves TCP between them and to the network's router,
// prints what it built and removes everything again.
//
// It never touches the machine's real network. It makes two throwaway
// namespaces: a host, whose "physical" interface eth1 is one end of a veth
// pair, and an upstream network at the other end, with a switch and a
// router address on it. Run it inside a fresh network namespace:
//
//	go build -o /tmp/mv ./examples/macvlan && sudo unshare --net /tmp/mv
//	sudo unshare --net /tmp/mv -mode private   # containers cannot talk; the router still works
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
	mode := flag.String("mode", "bridge", "macvlan mode: bridge, private, vepa or passthru")
	subnet := flag.String("subnet", "192.168.77.0/24", "subnet of the upstream network")
	routerAddr := flag.String("router", "192.168.77.254", "the upstream router's address, the containers' gateway")
	flag.Parse()
	if err := run(*mode, netip.MustParsePrefix(*subnet), netip.MustParseAddr(*routerAddr)); err != nil {
		log.Fatal(err)
	}
}

func run(mode string, subnet netip.Prefix, router netip.Addr) error {
	ctx := context.Background()
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo makes network namespaces and links: run it as root")
	}
	if !subnet.Contains(router) {
		return fmt.Errorf("router %s is outside subnet %s", router, subnet)
	}
	dir, err := os.MkdirTemp("", "cnm-macvlan-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// 1. The upstream network: a switch with the router's address.
	upstream, err := osl.NewNamespace(ctx, filepath.Join(dir, "upstream"))
	if err != nil {
		return err
	}
	defer upstream.Delete()
	sw, err := upstream.AddBridge(ctx, osl.BridgeSpec{Name: "sw0"})
	if err != nil {
		return err
	}
	if err := upstream.AddAddress(ctx, sw, netip.PrefixFrom(router, subnet.Bits())); err != nil {
		return err
	}
	if err := upstream.LinkUp(ctx, sw, false); err != nil {
		return err
	}

	// 2. The host, plugged into the switch by its "physical" interface eth1.
	hostNS, err := osl.NewNamespace(ctx, filepath.Join(dir, "host"))
	if err != nil {
		return err
	}
	defer hostNS.Delete()
	if err := upstream.AddVeth(ctx, osl.VethSpec{HostName: "up0", PeerName: "eth1", PeerNS: hostNS, MasterIndex: sw}); err != nil {
		return err
	}
	eth1, err := hostNS.LinkByName(ctx, "eth1")
	if err != nil {
		return err
	}
	if err := hostNS.LinkUp(ctx, eth1.Index, false); err != nil {
		return err
	}

	// 3. A controller in the host, and a macvlan network on eth1.
	ctrl, err := cnm.New(
		cnm.WithHostNamespace(hostNS.Path()),
		cnm.WithRunDir(filepath.Join(dir, "run")),
		cnm.WithDataDir(filepath.Join(dir, "data")),
	)
	if err != nil {
		return err
	}
	defer ctrl.Close()
	nw, err := ctrl.NewNetwork(ctx, "macvlan", "lan",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet, Gateway: router}),
		cnm.WithDriverOptions(map[string]string{"parent": "eth1", "macvlan_mode": mode}),
	)
	if err != nil {
		return err
	}
	defer nw.Delete(ctx)
	fmt.Printf("cnm macvlan demo in a throwaway host namespace, %s\n", hostNS.Path())
	fmt.Printf("network %q: macvlan mode %s on parent eth1 (MTU %d), subnet %s, router %s upstream\n\n", nw.Name(), mode, eth1.MTU, subnet, router)

	// 4. Two containers, one endpoint each, joined. Passthru takes the
	// parent over for one container only.
	names := []string{"web", "client"}
	if mode == "passthru" {
		names = names[:1]
	}
	type box struct {
		sb *cnm.Sandbox
		ep *cnm.Endpoint
	}
	var boxes []box
	for _, name := range names {
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

	// 5. TCP from each container to its peer and to the router. In bridge
	// mode the kernel switches between the containers; in private mode it
	// never does; in VEPA mode it sends everything out of eth1, and this
	// switch does not send frames back the way they came (no hairpin).
	peersTalk := mode == "bridge"
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tINTERFACE\tADDRESS\tGATEWAY\tTCP TO PEER\tTCP TO ROUTER")
	failed := false
	for i, b := range boxes {
		info := b.ep.Info()
		toPeer := "-"
		if len(boxes) > 1 {
			peer := boxes[1-i]
			to := netip.AddrPortFrom(peer.ep.Info().IPv4.Addr(), 8080)
			timeout := 2 * time.Second
			if !peersTalk {
				timeout = 300 * time.Millisecond
			}
			start := time.Now()
			err := cnmtest.TCPExchange(ctx, peer.sb.Key(), b.sb.Key(), to, timeout)
			took := time.Since(start).Round(10 * time.Microsecond)
			switch {
			case err == nil && peersTalk:
				toPeer = fmt.Sprintf("%s: ok (%v)", to, took)
			case err != nil && !peersTalk:
				toPeer = fmt.Sprintf("%s: blocked, as %s mode wants", to, mode)
			case err == nil:
				toPeer, failed = fmt.Sprintf("%s: reached, but %s mode must block it", to, mode), true
			default:
				toPeer, failed = fmt.Sprintf("%s: FAILED: %v", to, err), true
			}
		}
		to := netip.AddrPortFrom(router, 80)
		start := time.Now()
		var toRouter string
		if err := cnmtest.TCPExchange(ctx, upstream.Path(), b.sb.Key(), to, 2*time.Second); err != nil {
			toRouter, failed = fmt.Sprintf("%s: FAILED: %v", to, err), true
		} else {
			toRouter = fmt.Sprintf("%s: ok (%v)", to, time.Since(start).Round(10*time.Microsecond))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.sb.ContainerID(), info.InterfaceName, info.IPv4, info.Gateway, toPeer, toRouter)
	}
	tw.Flush()
	if failed {
		return fmt.Errorf("connectivity check failed")
	}
	fmt.Println("\nall checks passed; removing sandboxes, endpoints and the network")
	return nil
}
