package main

// The demo's lab: the hosts and their underlay, etcd, and the teardown.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/osl"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startEtcd starts a single-member etcd inside this process: clients on
// 127.0.0.1 at a free port, its data under dir. It returns the server and
// its client URL; Close stops it.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	var lastErr error
	for try := range 3 { // a free port may be taken between choosing and binding it
		e, client, err := tryEtcd(filepath.Join(dir, fmt.Sprint("etcd", try)))
		if err == nil {
			return e, client, nil
		}
		lastErr = err
	}
	return nil, "", fmt.Errorf("start etcd: %w", lastErr)
}

func tryEtcd(dir string) (*embed.Etcd, string, error) {
	client, err := freeURL()
	if err != nil {
		return nil, "", err
	}
	peer, err := freeURL()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "cnm-demo"
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // failures come back as errors
	cfg.UnsafeNoFsync = true                                       // a throwaway store
	cfg.TickMs, cfg.ElectionMs = 10, 100                           // a single member elects itself at once
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, client.String(), nil
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(10 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd not ready within 10s")
	}
}

// freeURL returns an http URL on 127.0.0.1 with a port that was free a
// moment ago.
func freeURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("find a free port on 127.0.0.1 (is lo up?): %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

// host is one "host": a namespace with an underlay link and a controller.
type host struct {
	name string
	ns   *osl.Namespace
	vtep netip.Addr
	ctrl *cnm.Controller
}

// makeHosts makes the switch namespace and the hosts, each with its
// underlay link and controller.
func makeHosts(ctx context.Context, dir, etcdURL string, td *teardown) ([]*host, error) {
	sw, err := newNamespace(ctx, filepath.Join(dir, "switch"), td)
	if err != nil {
		return nil, err
	}
	br, err := sw.AddBridge(ctx, osl.BridgeSpec{Name: "sw0"})
	if err == nil {
		err = sw.LinkUp(ctx, br, false)
	}
	if err != nil {
		return nil, fmt.Errorf("switch bridge: %w", err)
	}
	var hosts []*host
	for i := range hostCount {
		h := &host{name: fmt.Sprintf("host%d", i+1), vtep: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})}
		if h.ns, err = newNamespace(ctx, filepath.Join(dir, h.name+"-netns"), td); err != nil {
			return nil, err
		}
		if err := underlay(ctx, sw, br, h, fmt.Sprintf("h%d", i+1)); err != nil {
			return nil, fmt.Errorf("underlay of %s: %w", h.name, err)
		}
		h.ctrl, err = cnm.New(
			cnm.WithHostNamespace(h.ns.Path()),
			cnm.WithRunDir(filepath.Join(dir, h.name, "run")),
			cnm.WithDataDir(filepath.Join(dir, h.name, "data")),
			cnm.WithGlobalStore(cnm.GlobalStore{Endpoints: []string{etcdURL}}),
			cnm.WithAdvertiseAddress(h.vtep),
		)
		if err != nil {
			return nil, fmt.Errorf("controller of %s: %w", h.name, err)
		}
		td.add("close the controller of "+h.name, func(context.Context) error { return h.ctrl.Close() })
		hosts = append(hosts, h)
	}
	return hosts, nil
}

func newNamespace(ctx context.Context, path string, td *teardown) (*osl.Namespace, error) {
	ns, err := osl.NewNamespace(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("make namespace %s: %w", path, err)
	}
	td.add("delete namespace "+path, func(context.Context) error { return ns.Delete() })
	return ns, nil
}

// underlay connects host h to the switch bridge br: a veth pair, port on
// the switch, ul0 with the host's VTEP address in h.
func underlay(ctx context.Context, sw *osl.Namespace, br int, h *host, port string) error {
	if err := sw.AddVeth(ctx, osl.VethSpec{HostName: port, PeerName: "ul0", PeerNS: h.ns, MasterIndex: br}); err != nil {
		return err
	}
	ul, err := h.ns.LinkByName(ctx, "ul0")
	if err != nil {
		return err
	}
	if err := h.ns.AddAddress(ctx, ul.Index, netip.PrefixFrom(h.vtep, 24)); err != nil {
		return err
	}
	if err := h.ns.LinkUp(ctx, ul.Index, false); err != nil {
		return err
	}
	p, err := sw.LinkByName(ctx, port)
	if err != nil {
		return err
	}
	return sw.LinkUp(ctx, p.Index, false)
}

// loopbackUp brings up lo of the namespace the demo runs in, where etcd
// listens: a fresh namespace (unshare --net) has it down.
func loopbackUp(ctx context.Context) error {
	self, err := osl.OpenNamespace(ctx, "/proc/self/ns/net")
	if err != nil {
		return err
	}
	defer self.Close()
	lo, err := self.LinkByName(ctx, "lo")
	if err != nil || lo.Up {
		return err
	}
	return self.SetLinkUp(ctx, lo.Index)
}

// teardown undoes what the demo made, the last made first.
type teardown []step

type step struct {
	what string
	fn   func(context.Context) error
}

func (td *teardown) add(what string, fn func(context.Context) error) {
	*td = append(*td, step{what, fn})
}

func (td teardown) run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(td) - 1; i >= 0; i-- {
		if err := td[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", td[i].what, err))
		}
	}
	return errors.Join(errs...)
}
