// Package overlay is the data plane of cnm's overlay driver: VXLAN networks
// that span several hosts, each host's part of a network living in a network
// namespace of its own, so that two overlay networks with the same subnet
// stay apart on one host.
//
// Kernel objects, per overlay network, on a host with joined endpoints:
//   - a network namespace bind-mounted at Config.RunDir/"ov-" and the first
//     12 characters of the network ID, made at the first Join and dropped
//     (with everything in it) when the last endpoint leaves (or
//     Config.IdleTimeout later) or the network is deleted;
//   - inside it, the bridge "br0" carrying the network's gateway addresses;
//   - the VXLAN device "vxlan0", a port of that bridge: made by a request
//     sent from the host namespace, so that its UDP socket is bound in the
//     host namespace (the underlay), and born directly inside the network's
//     namespace (the effect of libnetwork's make-then-move, in one request).
//     Its VNI is the network's, its local address Config.AdvertiseAddress,
//     UDP port Config.Port (4789). Learning is off and it answers ARP and
//     neighbour solicitations from its own neighbour table (proxy): no frame
//     is ever flooded to other hosts;
//   - per joined endpoint, a veth pair made at Join in one request: one end
//     a port of br0, the other directly inside the sandbox, named and with
//     its MAC, as the bridge driver makes it.
//
// Where the other hosts' endpoints are comes from [Driver.AddPeer] and
// [Driver.RemovePeer] (fed by the control plane, etcd's peer table), and
// from [Driver.SyncPeers], which replaces a network's peers with a full
// list (the control plane's resync): each peer is a static FDB entry
// (MAC → remote VTEP) on vxlan0 and a permanent neighbour entry (IP → MAC)
// on vxlan0.
//
// The kernel objects outlive the driver: a controller that restarts makes a
// new Driver with the same Config.RunDir, which takes them back through
// [driverapi.Restorer] without disturbing traffic (see restore.go).
//
// Encrypted networks ([OptionEncrypted]) are refused with ErrNotSupported:
// the driver first probes whether the kernel carries ESP at all, and says
// which of the two reasons holds (see encrypted.go).
package overlay

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// NetworkType is the driver's name.
const NetworkType = "overlay"

// DefaultPort is the VXLAN UDP port IANA assigned (and Docker uses).
const DefaultPort = 4789

// vxlanOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4 (20),
// UDP (8), VXLAN (8) and inner Ethernet (14) headers. Over IPv6 the outer
// header is 20 bytes longer.
const vxlanOverhead = 50

// overhead returns what VXLAN adds on this host's underlay.
func (d *Driver) overhead() int {
	if d.cfg.AdvertiseAddress.Is6() {
		return vxlanOverhead + 20
	}
	return vxlanOverhead
}

// Config is what the driver needs from its controller.
type Config struct {
	// HostNS is the host namespace: the underlay, where the VXLAN devices'
	// UDP sockets live. Required.
	HostNS *osl.Namespace
	// AdvertiseAddress is this host's underlay address, the local VTEP of
	// every VXLAN device. It must be an address of a link of HostNS when a
	// network is made. Required.
	AdvertiseAddress netip.Addr
	// RunDir is the directory the networks' namespaces are bind-mounted in.
	// It is made if missing. Required.
	RunDir string
	// Port is the VXLAN UDP port; 0: [DefaultPort].
	Port uint16
	// MTU is the default MTU of overlay networks' interfaces; 0: the MTU of
	// the underlay link (the one with AdvertiseAddress) minus 50 (70 over an
	// IPv6 underlay). A network's
	// com.docker.network.driver.mtu option overrides it.
	MTU int
	// IdleTimeout is how long a network's namespace outlives the leave of
	// its last endpoint on this host, so that a container that restarts
	// finds it still there (making and dropping one costs tens of
	// milliseconds, and the drop holds the network). 0: dropped at once.
	IdleTimeout time.Duration
}

// Driver is the overlay driver: a [driverapi.Driver],
// [driverapi.EndpointPreparer] and [driverapi.Restorer], plus the peer API
// the control plane feeds.
type Driver struct {
	cfg Config

	// fault, when set (by tests), is called at each step of making a
	// network's namespace and joining; an error it returns fails the step.
	fault func(step string) error

	// mu guards networks.
	mu       sync.Mutex
	networks map[string]*network // by network ID

	// peerMu guards peers and every network's sb field, and is held while
	// peers are programmed, so that a namespace made at a Join and a peer
	// added at the same time never miss each other.
	peerMu sync.Mutex
	peers  map[string]map[netip.Addr]peerEntry // network ID → IP → where

	// esp caches the ESP probe's answer (see encrypted.go).
	esp espCache
}

var (
	_ driverapi.Driver           = (*Driver)(nil)
	_ driverapi.EndpointPreparer = (*Driver)(nil)
	_ driverapi.Restorer         = (*Driver)(nil)
)

// network is the driver's state of one overlay network on this host.
type network struct {
	id       string
	vni      uint32
	mtu      int
	ipv6     bool
	internal bool           // no way out: recorded; the driver offers none to any network
	gws      []netip.Prefix // gateway addresses on br0, with the subnets' lengths

	// mu serialises joins and leaves of the network (and its deletion), so
	// the namespace is made by the first and dropped by the last.
	mu        sync.Mutex
	endpoints map[string]*endpoint // guarded by mu
	joined    int                  // endpoints joined; guarded by mu

	// sb is the network's namespace while it exists; written under mu and
	// Driver.peerMu, read under either.
	sb *sandbox
	// idle, set while sb has no endpoint joined, drops it when it fires
	// (Config.IdleTimeout); guarded by mu.
	idle *time.Timer
}

// endpoint is the driver's state of one endpoint.
type endpoint struct {
	hostIf string // the veth end on br0 while joined, "" otherwise
}

// New returns an overlay driver.
func New(cfg Config) (*Driver, error) {
	switch {
	case cfg.HostNS == nil:
		return nil, fmt.Errorf("%w: overlay driver: HostNS is required", driverapi.ErrInvalid)
	case cfg.RunDir == "":
		return nil, fmt.Errorf("%w: overlay driver: RunDir is required", driverapi.ErrInvalid)
	}
	if err := checkVTEP("AdvertiseAddress", cfg.AdvertiseAddress); err != nil {
		return nil, fmt.Errorf("overlay driver: %w", err)
	}
	if cfg.MTU != 0 {
		if err := checkMTU("MTU", cfg.MTU, false); err != nil {
			return nil, fmt.Errorf("overlay driver: %w", err)
		}
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	return &Driver{cfg: cfg, networks: map[string]*network{}, peers: map[string]map[netip.Addr]peerEntry{}}, nil
}

// Register makes an overlay driver and registers it under [NetworkType].
func Register(r driverapi.Registerer, cfg Config) error {
	d, err := New(cfg)
	if err != nil {
		return err
	}
	return r.RegisterDriver(NetworkType, d)
}

// Type returns "overlay".
func (d *Driver) Type() string { return NetworkType }

// Capability says overlay networks are global and their endpoints have
// interfaces. Leave deletes the interface itself (no GoneWithSandbox): its
// other end is in the network's namespace, not the host's.
func (d *Driver) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.GlobalScope}
}

func (d *Driver) network(id string) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[id]
	if !ok {
		return nil, fmt.Errorf("%w: overlay network %q", driverapi.ErrNotFound, id)
	}
	return n, nil
}

// step runs the test fault hook, if any.
func (d *Driver) step(name string) error {
	if d.fault == nil {
		return nil
	}
	if err := d.fault(name); err != nil {
		return fmt.Errorf("overlay: %s: %w", name, err)
	}
	return nil
}
