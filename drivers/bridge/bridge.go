// Package bridge is cnm's bridge driver: one Linux bridge per network in the
// controller's host namespace, a veth pair per joined endpoint, and nftables
// rules for masquerade and isolation. It keeps Docker's option keys so that
// users' habits carry over.
//
// Kernel objects and their names:
//   - the bridge: the com.docker.network.bridge.name option, or "br-" and the
//     first 12 characters of the network ID (as Docker names them); it carries
//     the gateway addresses and the alias mark.Owner.Link(network ID), which
//     names the controller that made it;
//   - per joined endpoint, a veth pair made at Join in one netlink request:
//     the host end "veth" and 7 random hex digits, fresh at every Join so an
//     asynchronous kernel cleanup never collides with a new endpoint, already
//     a port of the bridge and up; the peer made directly inside the sandbox,
//     already named eth0, eth1, ...;
//   - nftables rules tagged with the network ID in the controller's table.
package bridge

import (
	"fmt"
	"log/slog"
	"net"
	"sync"

	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/osl"
)

// NetworkType is the driver's name.
const NetworkType = "bridge"

// Config is what the driver needs from its controller.
type Config struct {
	// HostNS is the namespace the bridges and host veth ends live in. Required.
	HostNS *osl.Namespace
	// Firewall programs the controller's nftables table in HostNS. Required.
	Firewall *firewall.Firewall
	// Owner is the controller's identity, carried by every bridge it makes.
	// Required.
	Owner mark.Owner
	// LeaveHostSysctls makes the driver write no sysctl of HostNS, for a
	// runtime that manages them itself. A network that routes out of its
	// bridge then fails, naming the sysctl, while IP forwarding is off.
	// Default false: the driver turns forwarding on as networks need it.
	LeaveHostSysctls bool
}

// Register makes a bridge driver and registers it under [NetworkType].
func Register(r driverapi.Registerer, cfg Config) error {
	d, err := New(cfg)
	if err != nil {
		return err
	}
	return r.RegisterDriver(NetworkType, d)
}

// New returns a bridge driver. Most programs call [Register] instead.
func New(cfg Config) (driverapi.Driver, error) {
	if cfg.HostNS == nil || cfg.Firewall == nil || cfg.Owner == "" {
		return nil, fmt.Errorf("%w: bridge driver: HostNS, Firewall and Owner are required", driverapi.ErrInvalid)
	}
	return &driver{cfg: cfg, log: slog.New(slog.DiscardHandler), networks: map[string]*network{}}, nil
}

type driver struct {
	cfg Config
	log *slog.Logger // SetLogger; discards by default

	// sysctlMu is held from a change of a host sysctl until the network
	// that made it is made or rolled back (see ensureForwarding).
	sysctlMu sync.Mutex

	// healMu keeps Heal (write-locked) apart from the operations that
	// change what it puts back (read-locked): making and deleting a
	// network, joins and leaves, publishing ports. A heal therefore never
	// remakes a bridge that is being deleted, nor rebuilds the firewall
	// without a network or ports just being added.
	healMu sync.RWMutex

	// mu guards networks.
	mu       sync.Mutex
	networks map[string]*network // by network ID
}

var _ driverapi.Driver = (*driver)(nil)

// network is the driver's state of one network. Its fields are set once at
// creation, except those under mu.
type network struct {
	id       string
	opts     options
	internal bool
	gw4, gw6 netip.Addr       // gateway addresses on the bridge; zero if none
	gwAddrs  []netip.Prefix   // the same with the subnets' prefix lengths, and bridgeLinkLocal with IPv6
	bridgeHW net.HardwareAddr // the bridge's MAC, kept when a heal makes it again
	fw       firewall.Network // the network's rules, as given to the firewall

	// ready: made, and not being deleted (guarded by driver.mu): only
	// a ready network is healed.
	ready bool

	// mu guards the fields below.
	mu        sync.Mutex
	bridge    int // bridge ifindex; changes when a heal makes the bridge again
	endpoints map[string]*endpoint
	localnet  bool // route_localnet is on on the bridge (ports.go)
}

// bridgeIndex returns the bridge's current index.
func (n *network) bridgeIndex() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bridge
}

type endpoint struct {
	hostIf    string          // host end of the veth while joined, "" otherwise
	hostIndex int             // its index
	ports     []firewall.Port // published, while joined
}

// SetLogger makes the driver log to l (driverapi.LogSetter). Call it
// before the driver is used.
func (d *driver) SetLogger(l *slog.Logger) { d.log = l }

// Type returns "bridge".
func (d *driver) Type() string { return NetworkType }

// Capability says bridge networks are local and their endpoints have interfaces.
func (d *driver) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.LocalScope, GoneWithSandbox: true}
}

func (d *driver) network(id string) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[id]
	if !ok {
		return nil, fmt.Errorf("%w: bridge network %s", driverapi.ErrNotFound, id)
	}
	return n, nil
}
