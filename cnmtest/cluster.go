package cnmtest

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/osl"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
	"github.com/seed53641549/cnm/store/etcd/etcdtest"
)

// Cluster is a throwaway multi-host setup for overlay networks: N hosts,
// each a host namespace with a controller; an underlay, each host's link
// "ul0" (192.0.2.<i+1>/24) a veth pair to a bridge in a switch namespace;
// and a real etcd, embedded in the test process, serving 127.0.0.1 on
// random ports from a temporary directory. Everything goes when the test
// ends. The controllers' etcd clients run in the test process's own
// namespace (run the tests in a fresh one, as the README's test script
// does); their VXLAN tunnels run over the underlay.
type Cluster struct {
	// Etcd is the cluster's global store (Stop and Restart it to test an
	// outage).
	Etcd *etcdtest.Server
	// Switch holds the underlay's bridge "sw0".
	Switch *osl.Namespace
	// Hosts are the hosts, host i with VTEP 192.0.2.<i+1> (fd00:ca::<i+1>
	// with ClusterOptions.IPv6Underlay).
	Hosts []*ClusterHost
	opts  ClusterOptions
}

// ClusterOptions tune [NewCluster].
type ClusterOptions struct {
	// LeaseTTL is every host's lease TTL; zero: 2 s, so that a host's
	// death shows quickly.
	LeaseTTL time.Duration
	// Prefix is the global store prefix; zero: the test's name.
	Prefix string
	// Options are added to every controller's.
	Options []cnm.Option
	// Proxied connects each host to etcd through a proxy of its own
	// (ClusterHost.Proxy), to cut one host off etcd while the others go on.
	Proxied bool
	// IPv6Underlay gives the underlay IPv6 addresses only (fd00:ca::/64):
	// the hosts advertise IPv6 VTEPs.
	IPv6Underlay bool
}

// ClusterHost is one host of a [Cluster].
type ClusterHost struct {
	*HostNS
	// VTEP is the host's underlay address (its link ul0's).
	VTEP netip.Addr
	// Ctrl is the host's controller; nil after Kill until Start.
	Ctrl *cnm.Controller
	// Proxy is the host's way to etcd with ClusterOptions.Proxied.
	Proxy *etcdtest.Proxy
	c     *Cluster
}

// NewCluster makes a cluster of n hosts (at most 250) with their
// controllers started.
func NewCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	SkipUnlessRoot(t)
	if n < 1 || n > 250 {
		t.Fatalf("cnmtest: cluster of %d hosts: 1-250", n)
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 2 * time.Second
	}
	if opts.Prefix == "" {
		opts.Prefix = "cnmtest-" + filepath.Base(t.Name())
	}
	ctx := context.Background()
	cl := &Cluster{Etcd: etcdtest.Start(t, etcdtest.Options{}), opts: opts}
	sw, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "switch"))
	if err != nil {
		t.Fatalf("cnmtest: switch namespace: %v", err)
	}
	t.Cleanup(func() { _ = sw.Delete() })
	cl.Switch = sw
	br, err := sw.AddBridge(ctx, osl.BridgeSpec{Name: "sw0"})
	if err != nil {
		t.Fatalf("cnmtest: switch bridge: %v", err)
	}
	if err := sw.LinkUp(ctx, br, false); err != nil {
		t.Fatalf("cnmtest: switch bridge up: %v", err)
	}
	for i := range n {
		vtep := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
		if opts.IPv6Underlay {
			vtep = netip.AddrFrom16([16]byte{0: 0xfd, 3: 0xca, 15: byte(i + 1)})
		}
		h := &ClusterHost{HostNS: NewHostNS(t), VTEP: vtep, c: cl}
		port := fmt.Sprintf("h%d", i+1)
		if err := sw.AddVeth(ctx, osl.VethSpec{HostName: port, PeerName: "ul0", PeerNS: h.NS, MasterIndex: br}); err != nil {
			t.Fatalf("cnmtest: underlay of host %d: %v", i+1, err)
		}
		if err := cl.up(ctx, h, port); err != nil {
			t.Fatalf("cnmtest: underlay of host %d: %v", i+1, err)
		}
		if opts.Proxied {
			h.Proxy = etcdtest.NewProxy(t, cl.Etcd)
		}
		cl.Hosts = append(cl.Hosts, h)
		h.Start(t)
		t.Cleanup(func() {
			h.Kill(t)
			unmountUnder(h.RunDir) // the data plane outlives its controller
		})
	}
	return cl
}

// up gives a host's underlay link its address and brings both ends up.
func (cl *Cluster) up(ctx context.Context, h *ClusterHost, port string) error {
	l, err := h.NS.LinkByName(ctx, "ul0")
	if err != nil {
		return err
	}
	bits := 24
	if h.VTEP.Is6() {
		bits = 64
	}
	if err := h.NS.AddAddress(ctx, l.Index, netip.PrefixFrom(h.VTEP, bits)); err != nil {
		return err
	}
	if err := h.NS.LinkUp(ctx, l.Index, false); err != nil {
		return err
	}
	p, err := cl.Switch.LinkByName(ctx, port)
	if err != nil {
		return err
	}
	return cl.Switch.LinkUp(ctx, p.Index, false)
}

// Options returns the options of the host's controller.
func (h *ClusterHost) Options() []cnm.Option {
	endpoints := h.c.Etcd.Endpoints()
	if h.Proxy != nil {
		endpoints = []string{h.Proxy.Endpoint()}
	}
	opts := append(h.HostNS.Options(), GlobalOptions(endpoints, h.c.opts.Prefix, h.c.opts.LeaseTTL, h.VTEP)...)
	return append(opts, h.c.opts.Options...)
}

// GlobalOptions are the options that make a controller a cluster host as
// [ClusterHost.Options] does: the global store at etcd under prefix, with
// leases of ttl and 2 s dial and request timeouts, and vtep advertised. A
// test that runs a host's controller in a child process builds its
// options with it.
func GlobalOptions(etcd []string, prefix string, ttl time.Duration, vtep netip.Addr) []cnm.Option {
	return []cnm.Option{
		cnm.WithGlobalStore(cnm.GlobalStore{Endpoints: etcd, Prefix: prefix, LeaseTTL: ttl,
			DialTimeout: 2 * time.Second, RequestTimeout: 2 * time.Second}),
		cnm.WithAdvertiseAddress(vtep),
	}
}

// Store opens a client of the cluster's etcd under the prefix its
// controllers use, so that keys read as they name them ("networks/…"),
// to check what they wrote. It is closed when the test ends.
func (cl *Cluster) Store(t testing.TB) *etcdstore.Store {
	t.Helper()
	kv, err := etcdstore.Open(context.Background(), etcdstore.Config{Endpoints: cl.Etcd.Endpoints(), Prefix: strings.TrimSuffix(cl.opts.Prefix, "/") + "/"})
	if err != nil {
		t.Fatalf("cnmtest: open the cluster's store: %v", err)
	}
	t.Cleanup(func() { _ = kv.Close() })
	return kv
}

// Start starts the host's controller (again, after Kill): as after a
// restart of its process, it takes back what its data dir records.
func (h *ClusterHost) Start(t testing.TB) {
	t.Helper()
	if h.Ctrl != nil {
		t.Fatalf("cnmtest: host %s: controller is running", h.VTEP)
	}
	c, err := cnm.New(h.Options()...)
	if err != nil {
		t.Fatalf("cnmtest: controller of host %s: %v", h.VTEP, err)
	}
	h.Ctrl = c
}

// Kill stops the host's controller as a crash looks to the other hosts:
// it stops renewing its lease (nothing is revoked, the data plane stays),
// so they lose its peers when the lease's TTL ends. On the host itself it
// is a Close: operations in flight finish, and writes not yet made to etcd
// are made by the next Start.
func (h *ClusterHost) Kill(t testing.TB) {
	t.Helper()
	if h.Ctrl == nil {
		return
	}
	if err := h.Ctrl.Close(); err != nil {
		t.Errorf("cnmtest: close controller of host %s: %v", h.VTEP, err)
	}
	h.Ctrl = nil
}
