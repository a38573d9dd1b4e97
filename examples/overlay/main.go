// Command overlay is cnm's multi-host demo: three "hosts", each with a cnm
// controller of its own, share one overlay network (VXLAN over an
// underlay) through an etcd embedded in the demo. It makes the network on
// host 1, waits for it to appear on hosts 2 and 3, starts a container on
// every host, proves TCP between every pair of containers, a name lookup
// across hosts and a service whose name rotates over its backends on every
// host, prints what it built and removes everything again.
//
//	switch     a namespace with bridge sw0 and one port per host: the underlay
//	host1..3   namespaces, each with underlay link ul0 192.0.2.N/24 (its
//	           VTEP) and a controller with data and run dirs in a temp dir
//	etcd       in this process, on 127.0.0.1, free ports, a temp data dir
//
// lab.go builds that and takes it down again; this file is what a
// runtime on each host does with cnm.
//
// Everything lives in namespaces the demo makes, except etcd's sockets on
// the loopback of the namespace it runs in; so run it in a fresh one:
//
//	sudo ./scripts/demo.sh overlay
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/drivers/overlay"
)

func main() {
	subnet := flag.String("subnet", "10.77.0.0/24", "subnet of the overlay network")
	flag.Parse()
	if err := run(netip.MustParsePrefix(*subnet)); err != nil {
		log.Fatalf("overlay demo failed: %v", err)
	}
}

const (
	hostCount = 3
	netName   = "demo-ov"
	service   = "web"           // every container is one of its backends
	wait      = 5 * time.Second // bound of every wait for the cluster to converge
)

// container is a sandbox with one endpoint on the overlay network.
type container struct {
	name  string
	h     *host
	sb    *cnm.Sandbox
	ep    *cnm.Endpoint
	addr  netip.Addr
	ready time.Duration // sandbox, endpoint and join
}

func run(subnet netip.Prefix) (retErr error) {
	ctx := context.Background()
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo makes network namespaces and links: run it as root")
	}
	var td teardown
	defer func() {
		start := time.Now()
		if err := td.run(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("teardown: %w", err))
		} else if retErr == nil {
			fmt.Printf("removed containers, network, controllers, etcd and namespaces in %v\n", since(start))
		}
	}()
	dir, err := os.MkdirTemp("", "cnm-overlay-demo-")
	if err != nil {
		return err
	}
	td.add("remove "+dir, func(context.Context) error { return removeDir(dir) })

	// 1. etcd, on the loopback of the namespace the demo runs in.
	if err := loopbackUp(ctx); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	start := time.Now()
	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return err
	}
	td.add("stop etcd", func(context.Context) error { etcd.Close(); return nil })
	fmt.Printf("cnm overlay demo: %d hosts, etcd at %s (up in %v)\n\n", hostCount, etcdURL, since(start))

	// 2. The underlay and the hosts, each with its controller.
	hosts, err := makeHosts(ctx, dir, etcdURL, &td)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tVTEP (ul0)\tCONTROLLER\tNAMESPACE")
	for _, h := range hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.name, h.vtep, h.ctrl.ID(), h.ns.Path())
	}
	tw.Flush()

	// 3. The overlay network, made on host 1. The other hosts learn it from
	// etcd's watch: their pollers start before the create, to time that.
	var arrived []chan error
	start = time.Now()
	for _, h := range hosts[1:] {
		ch := make(chan error, 1)
		arrived = append(arrived, ch)
		go func() {
			_, err := eventually(func() error { _, err := h.ctrl.NetworkByName(netName); return err })
			ch <- err
		}()
	}
	nw, err := hosts[0].ctrl.NewNetwork(ctx, overlay.NetworkType, netName, cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet}))
	if err != nil {
		return fmt.Errorf("make the overlay network on %s: %w", hosts[0].name, err)
	}
	made := since(start)
	td.add("delete network "+netName, func(ctx context.Context) error { return deleteNetwork(ctx, nw, hosts) })
	td.add("settle the hosts", func(ctx context.Context) error { return settle(ctx, hosts) })
	var seen []string
	for i, h := range hosts[1:] {
		if err := <-arrived[i]; err != nil {
			return fmt.Errorf("network %q never appeared on %s: %w", netName, h.name, err)
		}
		seen = append(seen, fmt.Sprintf("%s after %v", h.name, since(start)))
		if n, _ := h.ctrl.NetworkByName(netName); n.ID() != nw.ID() {
			return fmt.Errorf("%s: network %q has ID %s, want %s", h.name, netName, n.ID(), nw.ID())
		}
	}
	v4, _ := nw.IPv4()
	fmt.Printf("\nnetwork %q (%s): subnet %s, gateway %s, VXLAN ID %s\n", nw.Name(), nw.ID(), v4.Subnet, v4.Gateway,
		cmp.Or(nw.DriverOptions()[overlay.OptionVNI], "(not shown)"))
	fmt.Printf("  made on %s in %v; seen on %s (from the start of the create)\n\n", hosts[0].name, made, strings.Join(seen, ", "))

	// 4. A container per host: sandbox, endpoint, join.
	var cs []*container
	for i, h := range hosts {
		c, err := startContainer(ctx, h, fmt.Sprintf("c%d", i+1), &td)
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	fmt.Fprintln(tw, "CONTAINER\tHOST\tHOSTNAME\tINTERFACE\tADDRESS\tEGRESS (cnm_gwbridge)\tREADY IN")
	for _, c := range cs {
		info, egress := c.ep.Info(), "-"
		for _, ep := range c.sb.Endpoints() {
			if ep.Network().Name() == cnm.GatewayBridgeNetwork {
				egress = ep.Info().IPv4.String()
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.name, c.h.name, c.sb.Hostname(), info.InterfaceName, info.IPv4, egress, c.ready)
	}
	tw.Flush()
	fmt.Println()

	// 5. TCP from every container to every other, across the underlay.
	failed := 0
	for _, from := range cs {
		for _, to := range cs {
			if from == to {
				continue
			}
			var took time.Duration
			tries, err := eventually(func() error {
				start := time.Now()
				err := cnmtest.TCPExchange(ctx, to.sb.Key(), from.sb.Key(), netip.AddrPortFrom(to.addr, 8080), 500*time.Millisecond)
				took = since(start)
				return err
			})
			result := fmt.Sprintf("TCP ok in %v", took)
			if tries > 1 {
				result += fmt.Sprintf(" (on try %d: peers come by etcd's watch)", tries)
			}
			if err != nil {
				result, failed = "FAILED: "+err.Error(), failed+1
			}
			fmt.Fprintf(tw, "%s -> %s\t%s -> %s\t%s\n", from.name, to.name, from.h.name, to.h.name, result)
		}
	}
	tw.Flush()

	// 6. A name from another host, through the first container's embedded
	// DNS server.
	from, to := cs[0], cs[len(cs)-1]
	r := cnmtest.Resolver(from.sb.Key())
	var took time.Duration
	_, err = eventually(func() error {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		addrs, err := r.LookupNetIP(qctx, "ip4", to.name+".") // rooted: no search domains
		took = since(start)
		if err == nil && (len(addrs) != 1 || addrs[0] != to.addr) {
			err = fmt.Errorf("answered %v, want %s", addrs, to.addr)
		}
		return err
	})
	if err != nil {
		failed++
		fmt.Printf("\n%s resolves %q: FAILED: %v\n", from.name, to.name, err)
	} else {
		fmt.Printf("\n%s resolves %q at 127.0.0.11: %s (on %s) in %v\n", from.name, to.name, to.addr, to.h.name, took)
	}

	// 7. A service across hosts: every container is a backend of "web".
	// On an overlay network a service has no VIP: its name answers with
	// every backend, the first one rotating (DNS round robin).
	if firsts, err := roundRobin(ctx, r, cs); err != nil {
		failed++
		fmt.Printf("%s resolves service %q: FAILED: %v\n", from.name, service, err)
	} else {
		fmt.Printf("%s resolves service %q (%d backends on %d hosts) %d times: first %s\n",
			from.name, service, len(cs), len(hosts), len(cs), strings.Join(firsts, ", "))
	}
	if failed > 0 {
		return fmt.Errorf("%d checks failed", failed)
	}
	fmt.Println("\nall checks passed; removing everything")
	return nil
}

// roundRobin resolves the service's name as many times as there are
// containers, once they all answer to it, and returns the container whose
// address came first each time: each of them once, or an error.
func roundRobin(ctx context.Context, r *net.Resolver, cs []*container) ([]string, error) {
	byAddr := map[netip.Addr]string{}
	for _, c := range cs {
		byAddr[c.addr] = c.name
	}
	lookup := func() ([]netip.Addr, error) {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return r.LookupNetIP(qctx, "ip4", service+".") // A records only, in the server's order
	}
	if _, err := eventually(func() error {
		addrs, err := lookup()
		if err == nil && len(addrs) != len(cs) {
			err = fmt.Errorf("answered %v, want the %d backends", addrs, len(cs))
		}
		return err
	}); err != nil {
		return nil, err
	}
	var firsts []string
	seen := map[string]bool{}
	for range cs {
		addrs, err := lookup()
		if err != nil {
			return nil, err
		}
		name := byAddr[addrs[0]]
		if name == "" || seen[name] {
			return nil, fmt.Errorf("first answers %v then %s: not each backend in turn", firsts, addrs[0])
		}
		seen[name] = true
		firsts = append(firsts, name)
	}
	return firsts, nil
}

// startContainer makes a sandbox on h with an endpoint on the overlay
// network, joined, as a backend of the service.
func startContainer(ctx context.Context, h *host, name string, td *teardown) (*container, error) {
	nw, err := h.ctrl.NetworkByName(netName)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := h.ctrl.NewSandbox(ctx, name, cnm.WithHostname(name))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s on %s: %w", name, h.name, err)
	}
	td.add("delete sandbox "+name, sb.Delete)
	ep, err := nw.CreateEndpoint(ctx, name, cnm.WithService(service))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s on %s: %w", name, h.name, err)
	}
	td.add("delete endpoint "+name, ep.Delete)
	if err := ep.Join(ctx, sb); err != nil {
		return nil, fmt.Errorf("join %s on %s: %w", name, h.name, err)
	}
	td.add("leave "+name, func(ctx context.Context) error { return ep.Leave(ctx, sb) })
	return &container{name: name, h: h, sb: sb, ep: ep, addr: ep.Info().IPv4.Addr(), ready: since(start)}, nil
}

// eventually calls fn until it succeeds, for at most wait: hosts converge
// through etcd's watches, milliseconds after a change. It returns how many
// calls it took and fn's last error.
func eventually(fn func() error) (int, error) {
	deadline := time.Now().Add(wait)
	for tries := 1; ; tries++ {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return tries, err
		}
		time.Sleep(time.Millisecond)
	}
}

// settle waits on every host until the interfaces of removed endpoints are
// gone, and removes the gateway bridge network the overlay's egress made.
func settle(ctx context.Context, hosts []*host) error {
	var errs []error
	for _, h := range hosts {
		errs = append(errs, h.ctrl.Settle(ctx))
		if gw, err := h.ctrl.NetworkByName(cnm.GatewayBridgeNetwork); err == nil {
			errs = append(errs, gw.Delete(ctx))
		}
	}
	return errors.Join(errs...)
}

// deleteNetwork deletes the overlay network, once etcd no longer lists
// endpoints of other hosts on it, and waits until every host dropped it.
func deleteNetwork(ctx context.Context, nw *cnm.Network, hosts []*host) error {
	if _, err := eventually(func() error { return nw.Delete(ctx) }); err != nil {
		return err
	}
	for _, h := range hosts[1:] {
		if _, err := eventually(func() error {
			if _, err := h.ctrl.NetworkByName(nw.Name()); !errors.Is(err, cnm.ErrNotFound) {
				return fmt.Errorf("still on %s %v after its deletion", h.name, wait)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(10 * time.Microsecond) }
