// Package driverapi is the contract between cnm's controller and its network
// drivers.
//
// A driver owns the data plane of its networks: it makes and removes every
// kernel object of a network (bridges, host-side veth ends, VXLAN devices,
// firewall rules). The controller owns names, IDs, addresses (IPAM), the
// sandbox side of each interface (addresses, routes, the default gateway) and
// rollback. Drivers never import the root package.
//
// [Driver] holds only what every driver does. Capabilities that only some
// drivers have are optional interfaces ([ExternalConnector]) that the
// controller detects with a type assertion.
package driverapi

import (
	"context"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
)

// Sentinel errors, shared with the root package (which re-exports them), so
// errors.Is(err, cnm.ErrInvalid) also matches errors that drivers return.
var (
	ErrInvalid      = errdefs.ErrInvalid
	ErrNotFound     = errdefs.ErrNotFound
	ErrExists       = errdefs.ErrExists
	ErrInUse        = errdefs.ErrInUse
	ErrNotSupported = errdefs.ErrNotSupported
)

// Scope says where a driver's networks live.
type Scope string

const (
	// LocalScope networks exist on one host only (bridge, macvlan, host, null).
	LocalScope Scope = "local"
	// GlobalScope networks span every host sharing a global store (overlay).
	GlobalScope Scope = "global"
)

// Capability describes what the controller must do around a driver.
type Capability struct {
	// Scope of the driver's networks. The zero value is not valid: drivers set it.
	Scope Scope
	// NoInterface is true for drivers whose endpoints get no interface and no
	// addresses (null: loopback only; host: the sandbox is the host's own
	// stack). The controller then asks IPAM for nothing and configures nothing
	// inside the sandbox.
	NoInterface bool
	// GoneWithSandbox is true for drivers that can tell, from the host
	// namespace alone, when an endpoint's interface is gone (the bridge
	// driver: the host end of a veth pair vanishes with its peer). The
	// controller then drops a deleted sandbox's namespace at once and calls
	// Leave with SandboxGone, and Leave waits for the kernel to destroy the
	// interface. Without it, the controller keeps the sandbox's namespace
	// open until Leave has deleted the interface inside it.
	GoneWithSandbox bool
}

// Driver is a network driver. Every method may be called concurrently, for
// different networks and endpoints; the controller never calls two methods
// for the same endpoint at once. Each method is all or nothing: on error it
// leaves no kernel object behind.
type Driver interface {
	// Type returns the driver's name ("bridge").
	Type() string
	// Capability returns the driver's capability; it never changes.
	Capability() Capability
	// CreateNetwork parses req.Options (rejecting keys it does not know with
	// ErrInvalid naming the key) and makes the network's kernel objects.
	CreateNetwork(ctx context.Context, req NetworkRequest) error
	// DeleteNetwork removes every kernel object of the network. The controller
	// calls it only when the network has no endpoints.
	DeleteNetwork(ctx context.Context, networkID string) error
	// Join attaches the endpoint to a sandbox: it either makes the interface
	// inside req.Sandbox, named req.InterfaceName, with req.MAC, and reports
	// nothing in SrcName; or it makes a link in the host namespace and names it
	// in JoinResponse.SrcName for the controller to move in. The controller then
	// sets addresses, brings the interface up and installs routes.
	Join(ctx context.Context, req JoinRequest) (JoinResponse, error)
	// Leave undoes Join and returns once the endpoint's interface is gone
	// from the kernel: only then does the controller release its addresses.
	// The controller calls it off its callers' path, so it may block; it
	// has already taken the interface out of use inside the sandbox (down,
	// renamed to req.InterfaceName). With req.SandboxGone the sandbox's
	// namespace has been dropped (req.Sandbox is nil): the kernel destroys
	// the interface with it, unless something else holds the namespace;
	// the driver waits for that, and deletes the interface itself if it
	// lingers (see Capability.GoneWithSandbox).
	Leave(ctx context.Context, req LeaveRequest) error
}

// EndpointPreparer is implemented by drivers that need to hear of an
// endpoint before it joins (remote plugins, which allocate per-endpoint
// state). Drivers of this module need not: an endpoint's interface is made
// at Join, and the controller keeps the endpoint's addresses and MAC.
type EndpointPreparer interface {
	// CreateEndpoint prepares an endpoint. Addresses and MAC come from the
	// controller.
	CreateEndpoint(ctx context.Context, req EndpointRequest) error
	// DeleteEndpoint forgets an endpoint that is not joined.
	DeleteEndpoint(ctx context.Context, networkID, endpointID string) error
}

// ExternalConnector is implemented by drivers that give an endpoint a way in
// from outside the host (published ports). The controller allocates the
// host ports, then calls ProgramExternalConnectivity during the Join of an
// endpoint that has port mappings, and RevokeExternalConnectivity before its
// Leave. Endpoints of networks whose driver is no ExternalConnector cannot
// have port mappings.
type ExternalConnector interface {
	// ProgramExternalConnectivity makes req.Ports reach the endpoint: all of
	// them, or on error none.
	ProgramExternalConnectivity(ctx context.Context, req ExternalRequest) error
	// RevokeExternalConnectivity undoes it; revoking what is not programmed
	// is not an error.
	RevokeExternalConnectivity(ctx context.Context, req ExternalRequest) error
}

// ExternalRequest describes an endpoint's published ports to its driver.
type ExternalRequest struct {
	NetworkID  string
	EndpointID string
	// IPv4 and IPv6 are the endpoint's addresses; zero for a family the
	// network does not have.
	IPv4, IPv6 netip.Addr
	// Ports are bound: each has one host address family (HostIP is a
	// specific address or the family's unspecified one), its HostPort
	// chosen and HostPortEnd zero.
	Ports []PortMapping
}

// Restorer is implemented by drivers that can take their networks and
// endpoints back after the controller restarts. The controller calls
// RestoreNetwork for every network it has a record of, RestoreEndpoint for
// every endpoint, then FinishRestore once. It is optional: for a driver
// without it, the controller calls CreateNetwork (which must then accept a
// network whose kernel objects exist) and, for an EndpointPreparer,
// CreateEndpoint.
type Restorer interface {
	// RestoreNetwork takes a network back: it adopts the kernel objects that
	// still exist and makes again those that are gone (after a reboot),
	// without disturbing traffic on what exists.
	RestoreNetwork(ctx context.Context, req NetworkRequest) error
	// RestoreEndpoint takes an endpoint back; req.Sandbox is set when the
	// endpoint is joined and its interface still exists.
	RestoreEndpoint(ctx context.Context, req RestoreEndpointRequest) error
	// FinishRestore removes kernel objects of the driver's networks that no
	// restored endpoint explains (left by a crash halfway through a join).
	FinishRestore(ctx context.Context) error
}

// RestoreEndpointRequest describes an endpoint to take back.
type RestoreEndpointRequest struct {
	NetworkID     string
	EndpointID    string
	MAC           net.HardwareAddr
	IPv4, IPv6    netip.Prefix
	Sandbox       *osl.Namespace // nil when not joined
	InterfaceName string         // inside Sandbox, when joined
	// Ports are the endpoint's bound ports while joined (see
	// ExternalRequest.Ports), for a driver that is an ExternalConnector.
	Ports []PortMapping
}

// PortMapping publishes one container port on the host: `-p
// [HostIP:][HostPort[-HostPortEnd]:]ContainerPort[/Proto]` in Docker's words.
type PortMapping struct {
	Proto         string     // "tcp", "udp" or "sctp"
	HostIP        netip.Addr // zero: every address of the host, of each family the network has
	HostPort      uint16     // 0: an ephemeral port
	HostPortEnd   uint16     // 0: HostPort alone; else the first free port of HostPort..HostPortEnd
	ContainerPort uint16     // port inside the sandbox
}

// IPAMData is one address family's addressing of a network.
type IPAMData struct {
	Pool         netip.Prefix          // the subnet
	Gateway      netip.Prefix          // gateway address with the subnet's prefix length; zero if none
	AuxAddresses map[string]netip.Addr // reserved addresses, by name
}

// NetworkRequest asks a driver to make a network.
type NetworkRequest struct {
	ID       string
	Name     string
	Options  map[string]string // driver options, keys as Docker names them
	Labels   map[string]string
	Internal bool // no route out of the network: no gateway route, no masquerade
	IPv4     *IPAMData
	IPv6     *IPAMData // nil: IPv4 only
}

// EndpointRequest asks a driver to prepare an endpoint.
type EndpointRequest struct {
	NetworkID  string
	EndpointID string
	MAC        net.HardwareAddr
	IPv4       netip.Prefix // zero when the network has no IPv4
	IPv6       netip.Prefix // zero when the network has no IPv6
}

// JoinRequest asks a driver to attach an endpoint to a sandbox.
type JoinRequest struct {
	NetworkID     string
	EndpointID    string
	Sandbox       *osl.Namespace // the sandbox's network namespace
	InterfaceName string         // name of the interface inside the sandbox ("eth0")
	MAC           net.HardwareAddr
	IPv4          netip.Prefix
	IPv6          netip.Prefix
}

// StaticRoute is a route the driver wants inside the sandbox through the
// endpoint's interface.
type StaticRoute struct {
	Destination netip.Prefix
	NextHop     netip.Addr // zero: directly connected
}

// JoinResponse is what a driver reports after Join.
type JoinResponse struct {
	// SrcName names a link in the host namespace that the controller moves
	// into the sandbox and renames to InterfaceName. Empty: the driver made
	// the interface inside the sandbox itself (or the driver has none).
	SrcName string
	// Gateway and GatewayIPv6 are the next hops of a default route through
	// this endpoint; zero: the endpoint offers no way out (internal networks).
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	// StaticRoutes are installed through the endpoint's interface.
	StaticRoutes []StaticRoute
}

// LeaveRequest asks a driver to detach an endpoint from a sandbox.
type LeaveRequest struct {
	NetworkID  string
	EndpointID string
	// Sandbox is the sandbox's namespace, open until Leave returns; nil
	// with SandboxGone, and for drivers with Capability.GoneWithSandbox.
	Sandbox *osl.Namespace
	// InterfaceName is the interface's name inside the sandbox now: the
	// controller renames an interface it takes out of use. Empty: as joined.
	InterfaceName string
	// SandboxGone: the sandbox's namespace was dropped; the kernel destroys
	// its links once nothing holds it.
	SandboxGone bool
}
