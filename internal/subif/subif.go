// Package subif is the one implementation behind the macvlan and ipvlan
// drivers: "sub-interface" drivers, whose endpoints are links made on a
// parent interface of the host, directly inside the sandbox. The two
// drivers differ only in what a [Kind] describes: their name, their mode
// option and modes, whether a link has a MAC of its own, the osl call that
// makes a link, and the wording of a few errors. Everything else (options,
// addressing, parents, endpoint bookkeeping, Join, Leave, restore) is here.
//
// Kernel objects and their names:
//   - per joined endpoint, a link made at Join directly inside the sandbox
//     in one netlink request, already named eth0, eth1, ...; it goes with
//     Leave, or with the sandbox;
//   - the parent is the user's interface and is never changed, except: an
//     802.1Q sub-interface ("eth1.50") that does not exist is made, and
//     deleted with the last network that uses it; an internal network (no
//     parent) gets its own parent, [Kind.InternalPrefix] and 11 characters
//     of the network ID, a bridge without ports (see package parent),
//     deleted with it.
//
// Nothing is made in the host namespace for an endpoint.
package subif

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

// Kind is what sets one sub-interface driver apart from another. M is the
// kernel's mode type of its links (osl.MacvlanMode, osl.IPvlanMode). The
// strings, Modes and AddLink are required; the bools default to false.
type Kind[M any] struct {
	// Type is the driver's network type ("macvlan"). It names the driver
	// in errors, and the link kind in the parent table: two kinds never
	// share a parent.
	Type string
	// InternalPrefix starts the name of an internal network's own parent
	// ("mvi-"); at most 4 characters, so that 11 of the network ID fit.
	InternalPrefix string
	// ModeOption is the driver option key of the mode ("macvlan_mode").
	ModeOption string
	// Modes are the values ModeOption takes, in the order errors list them;
	// at least one. The first is the default.
	Modes []Mode[M]
	// OwnMAC: a link has the endpoint's MAC (macvlan). False: the parent's
	// (ipvlan), and the endpoint's MAC is not given to AddLink.
	OwnMAC bool
	// KernelOptional: the kernel may lack the link type (ipvlan is
	// CONFIG_IPVLAN). A Join that meets osl.ErrKindNotSupported then fails
	// with an error wrapping driverapi.ErrNotSupported, "the kernel has no
	// <Type>". False: the error is returned as the kernel gave it.
	KernelOptional bool
	// NeedsGateway says who needs a gateway, in the error for a subnet
	// without one: "a macvlan network with a parent".
	NeedsGateway string
	// AddLink makes a link on spec.ParentIndex of host, directly inside
	// spec.NS, in one request (osl.Namespace.AddMacvlan). On error no link
	// may exist.
	AddLink func(ctx context.Context, host *osl.Namespace, spec LinkSpec[M]) error
}

// Mode is one value of a [Kind]'s mode option.
type Mode[M any] struct {
	// Name is the option value, as Docker spells it ("bridge").
	Name string
	// Value is the kernel's mode.
	Value M
	// Exclusive: a network in this mode has its parent alone and at most
	// one joined endpoint (macvlan passthru).
	Exclusive bool
	// Routed: the parent routes (ipvlan l3). A network needs no gateway and
	// is given none; each Join reports a default route through the
	// interface per address family instead, with no next hop to resolve.
	Routed bool
}

// LinkSpec is what [Kind.AddLink] makes.
type LinkSpec[M any] struct {
	Name        string           // the interface name inside NS
	ParentIndex int              // the parent's index in the host namespace
	NS          *osl.Namespace   // the sandbox
	Mode        M                // the network's mode
	MAC         net.HardwareAddr // the endpoint's MAC if the Kind has OwnMAC; nil: the kernel's choice
	MTU         int              // 0: the parent's
}

// Config is what a driver needs from its controller.
type Config struct {
	// HostNS is the namespace the parent interfaces live in. Required.
	HostNS *osl.Namespace
	// Parents records which networks use which parent. Give the macvlan and
	// ipvlan drivers of one controller the same table, so that the two never
	// share a parent. Nil: the driver keeps a table of its own.
	Parents *parent.Table
}

// Register makes a driver of kind k and registers it under k.Type.
func Register[M any](r driverapi.Registerer, k Kind[M], cfg Config) error {
	d, err := New(k, cfg)
	if err != nil {
		return err
	}
	return r.RegisterDriver(k.Type, d)
}

// New returns a driver of kind k. It fails with an error wrapping
// driverapi.ErrInvalid if cfg has no HostNS, and with a plain error if k has
// no Modes or no AddLink (a bug in the calling driver). The driver is safe
// for concurrent use.
func New[M any](k Kind[M], cfg Config) (driverapi.Driver, error) {
	if len(k.Modes) == 0 || k.AddLink == nil {
		return nil, fmt.Errorf("%s driver: the kind needs at least one mode and an AddLink", k.Type)
	}
	if cfg.HostNS == nil {
		return nil, fmt.Errorf("%w: %s driver: HostNS is required", driverapi.ErrInvalid, k.Type)
	}
	if cfg.Parents == nil {
		// Standalone use: the links it makes carry a fresh identity.
		cfg.Parents = parent.New(cfg.HostNS, mark.NewOwner())
	}
	return &driver[M]{kind: k, cfg: cfg, networks: map[string]*network[M]{}}, nil
}

type driver[M any] struct {
	kind Kind[M]
	cfg  Config

	// mu guards networks.
	mu       sync.Mutex
	networks map[string]*network[M] // by network ID; nil while being created
}

var (
	_ driverapi.Driver   = (*driver[osl.MacvlanMode])(nil)
	_ driverapi.Restorer = (*driver[osl.MacvlanMode])(nil)
)

// network is the driver's state of one network. Its fields are set once at
// creation, except endpoints.
type network[M any] struct {
	id       string
	opts     Options[M]
	parent   parent.Parent
	internal bool       // no way out: WithInternal, or no parent
	gw4, gw6 netip.Addr // the physical network's routers; zero if none, or routed
	v4, v6   bool       // the network has IPv4, IPv6 (routed: a default route each)

	// mu guards endpoints and the endpoints' fields.
	mu        sync.Mutex
	endpoints map[string]*endpoint
}

type endpoint struct {
	ifName  string // interface inside the sandbox while joined (or joining), "" otherwise
	sandbox *osl.Namespace
}

// Type returns the kind's network type.
func (d *driver[M]) Type() string { return d.kind.Type }

// Capability reports a local-scope driver.
func (d *driver[M]) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.LocalScope}
}

func (d *driver[M]) network(id string) (*network[M], error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks[id] // nil while being created
	if n == nil {
		return nil, fmt.Errorf("%w: %s network %s", driverapi.ErrNotFound, d.kind.Type, id)
	}
	return n, nil
}

// internalName names an internal network's own parent.
func (k Kind[M]) internalName(networkID string) string {
	id := networkID
	if len(id) > osl.MaxNameLen-len(k.InternalPrefix) {
		id = id[:osl.MaxNameLen-len(k.InternalPrefix)]
	}
	return k.InternalPrefix + id
}
