// Command plugin shows cnm using a third-party network plugin: a tiny
// plugin written in Go against Docker's plugin protocol (tiny.go: a bridge
// per network, a veth pair per container), served on a unix socket, and a
// program that drives it through cnm: a network, two containers, TCP
// between them, teardown.
//
// By default everything happens in a throwaway host namespace, so the
// machine's network is never touched:
//
//	sudo ./scripts/demo.sh plugin    # or: go build ./examples/plugin && sudo unshare --net ./plugin
//
// With -serve PATH it only serves the plugin, on the socket PATH, in the
// process's own network namespace; dockerd finds it there as
// /run/docker/plugins/tiny.sock (`docker network create -d tiny ...`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

func main() {
	serve := flag.String("serve", "", "only serve the plugin on this unix socket, in this process's namespace")
	flag.Parse()
	var err error
	if *serve != "" {
		err = serveOnly(*serve)
	} else {
		err = demo()
	}
	if err != nil {
		log.Fatal(err)
	}
}

// listen serves the plugin of namespace nsPath on a unix socket at path.
func listen(nsPath, path string) (*http.Server, error) {
	p, err := newTiny(nsPath)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: p.handler()}
	go srv.Serve(l)
	return srv, nil
}

func serveOnly(path string) error {
	srv, err := listen("/proc/self/ns/net", path)
	if err != nil {
		return err
	}
	fmt.Printf("tiny network plugin serving on %s; ^C stops it\n", path)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
	return srv.Close()
}

func demo() error {
	ctx := context.Background()
	if os.Geteuid() != 0 {
		return errors.New("the demo makes network namespaces and links: run it as root")
	}
	dir, err := os.MkdirTemp("", "cnm-plugin-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	hostNS, err := osl.NewNamespace(ctx, filepath.Join(dir, "host"))
	if err != nil {
		return err
	}
	defer hostNS.Delete()

	// 1. The plugin, a separate server on a unix socket (a goroutine here;
	// a process of its own just as well), in the same host namespace.
	sock := filepath.Join(dir, "plugins", "tiny.sock")
	srv, err := listen(hostNS.Path(), sock)
	if err != nil {
		return err
	}
	defer srv.Close()

	// 2. A controller that knows where the plugin is. (Put the socket in
	// /run/docker/plugins, or use cnm.WithPluginDirs, and it is found by
	// name instead.)
	ctrl, err := cnm.New(
		cnm.WithHostNamespace(hostNS.Path()),
		cnm.WithRunDir(filepath.Join(dir, "run")),
		cnm.WithDataDir(filepath.Join(dir, "data")),
		cnm.WithPlugin("tiny", "unix://"+sock),
	)
	if err != nil {
		return err
	}
	defer ctrl.Close()

	// 3. A network of the plugin's, and two containers on it.
	nw, err := ctrl.NewNetwork(ctx, "tiny", "demo", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.90.0.0/24")}))
	if err != nil {
		return err
	}
	defer nw.Delete(ctx)
	fmt.Printf("network %q of plugin %q (socket %s)\n", nw.Name(), nw.Type(), sock)
	var sbs []*cnm.Sandbox
	var addrs []netip.Prefix
	for _, name := range []string{"web", "client"} {
		start := time.Now()
		sb, err := ctrl.NewSandbox(ctx, name, cnm.WithHostname(name))
		if err != nil {
			return err
		}
		defer sb.Delete(ctx)
		ep, err := nw.CreateEndpoint(ctx, name)
		if err != nil {
			return err
		}
		if err := ep.Join(ctx, sb); err != nil {
			return err
		}
		info := ep.Info()
		fmt.Printf("container %-6s %s %s via %s, ready in %v\n", name, info.InterfaceName, info.IPv4, info.Gateway, time.Since(start).Round(10*time.Microsecond))
		sbs, addrs = append(sbs, sb), append(addrs, info.IPv4)
	}

	// 4. TCP both ways.
	for i := range sbs {
		to := netip.AddrPortFrom(addrs[i].Addr(), 8080)
		if err := cnmtest.TCPExchange(ctx, sbs[i].Key(), sbs[1-i].Key(), to, 2*time.Second); err != nil {
			return fmt.Errorf("TCP to %s: %w", to, err)
		}
		fmt.Printf("TCP %s -> %s: ok\n", sbs[1-i].ContainerID(), to)
	}
	fmt.Println("all checks passed; removing the containers and the network")
	return nil
}
