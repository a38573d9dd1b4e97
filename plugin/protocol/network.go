package protocol

// Keys of the options in NetworkDriver requests, as Docker names them.
const (
	// OptionGeneric (CreateNetwork, CreateEndpoint) holds the user's driver
	// options (`docker network create -o k=v`), a JSON object of strings.
	OptionGeneric = "com.docker.network.generic"
	// OptionEnableIPv6 (CreateNetwork) is true when the network has IPv6.
	OptionEnableIPv6 = "com.docker.network.enable_ipv6"
	// OptionInternal (CreateNetwork) is true for a network with no way out.
	OptionInternal = "com.docker.network.internal"
	// OptionMACAddress (CreateEndpoint) is the endpoint's MAC address.
	OptionMACAddress = "com.docker.network.endpoint.macaddress"
	// OptionExposedPorts (CreateEndpoint, ProgramExternalConnectivity) is a
	// list of [TransportPort].
	OptionExposedPorts = "com.docker.network.endpoint.exposedports"
	// OptionPortMap (CreateEndpoint, ProgramExternalConnectivity) is a list
	// of [PortBinding].
	OptionPortMap = "com.docker.network.portmap"
)

// Scopes a driver reports in [CapabilitiesResponse].
const (
	LocalScope  = "local"
	GlobalScope = "global"
)

// Route types of a [StaticRoute].
const (
	// RouteNextHop: the destination is reached through NextHop.
	RouteNextHop = 0
	// RouteConnected: the destination is on the interface's own link;
	// NextHop is empty.
	RouteConnected = 1
)

// Discovery types of a [DiscoveryNotification].
const (
	// NodeDiscovery announces a host of the cluster; DiscoveryData is a
	// [NodeDiscoveryData].
	NodeDiscovery = 1
)

// Transport protocol numbers of [TransportPort] and [PortBinding] (IANA).
const (
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// CapabilitiesResponse answers /NetworkDriver.GetCapabilities (empty
// request).
type CapabilitiesResponse struct {
	ErrorResponse
	// Scope is LocalScope or GlobalScope: where the driver's networks are
	// known. Empty means local.
	Scope string
	// ConnectivityScope, when set, is where the networks' endpoints can
	// reach each other; empty means as Scope.
	ConnectivityScope string `json:",omitempty"`
}

// IPAMData is one address pool of a network.
type IPAMData struct {
	AddressSpace string
	// Pool is the subnet, "10.0.0.0/24".
	Pool string
	// Gateway is the gateway with the pool's prefix length, "10.0.0.1/24";
	// empty when the network has none.
	Gateway string
	// AuxAddresses maps names to addresses with the pool's prefix length,
	// reserved for the driver's own use.
	AuxAddresses map[string]string `json:",omitempty"`
}

// CreateNetworkRequest is the body of /NetworkDriver.CreateNetwork.
type CreateNetworkRequest struct {
	NetworkID string
	// Options: OptionGeneric (the driver options), OptionEnableIPv6,
	// OptionInternal.
	Options  map[string]any
	IPv4Data []IPAMData
	IPv6Data []IPAMData
}

// DeleteNetworkRequest is the body of /NetworkDriver.DeleteNetwork.
type DeleteNetworkRequest struct {
	NetworkID string
}

// AllocateNetworkRequest is the body of /NetworkDriver.AllocateNetwork: a
// cluster manager asks a global driver for network-wide resources (a VXLAN
// ID, say) before any host creates the network.
type AllocateNetworkRequest struct {
	NetworkID string
	Options   map[string]string
	IPv4Data  []IPAMData
	IPv6Data  []IPAMData
}

// AllocateNetworkResponse answers /NetworkDriver.AllocateNetwork.
type AllocateNetworkResponse struct {
	ErrorResponse
	// Options are passed on to every host's CreateNetwork.
	Options map[string]string
}

// FreeNetworkRequest is the body of /NetworkDriver.FreeNetwork: it undoes
// AllocateNetwork.
type FreeNetworkRequest struct {
	NetworkID string
}

// EndpointInterface describes an endpoint's interface: addresses with their
// prefix length, MAC in colon notation. Empty fields are unknown.
type EndpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

// CreateEndpointRequest is the body of /NetworkDriver.CreateEndpoint.
type CreateEndpointRequest struct {
	NetworkID  string
	EndpointID string
	// Interface holds what the daemon assigned; a driver may fill in only
	// what is empty there, in its answer.
	Interface *EndpointInterface
	// Options: OptionMACAddress, OptionExposedPorts, OptionPortMap.
	Options map[string]any
}

// CreateEndpointResponse answers /NetworkDriver.CreateEndpoint.
type CreateEndpointResponse struct {
	ErrorResponse
	// Interface is nil, or holds values the driver chose for fields the
	// request left empty.
	Interface *EndpointInterface `json:",omitempty"`
}

// EndpointInfoRequest is the body of /NetworkDriver.EndpointOperInfo.
type EndpointInfoRequest struct {
	NetworkID  string
	EndpointID string
}

// EndpointInfoResponse answers /NetworkDriver.EndpointOperInfo: whatever the
// driver wants to report about an endpoint.
type EndpointInfoResponse struct {
	ErrorResponse
	Value map[string]any
}

// DeleteEndpointRequest is the body of /NetworkDriver.DeleteEndpoint.
type DeleteEndpointRequest struct {
	NetworkID  string
	EndpointID string
}

// JoinRequest is the body of /NetworkDriver.Join.
type JoinRequest struct {
	NetworkID  string
	EndpointID string
	// SandboxKey is the path of the sandbox's network namespace file.
	SandboxKey string
	Options    map[string]any
}

// InterfaceName names the interface a driver made for a Join.
type InterfaceName struct {
	// SrcName is a link in the host namespace that the daemon moves into
	// the sandbox.
	SrcName string
	// DstPrefix is the name prefix the driver would like inside the
	// sandbox ("eth" gives eth0, eth1, ...).
	DstPrefix string
}

// StaticRoute is a route the driver wants inside the sandbox.
type StaticRoute struct {
	// Destination is a prefix, "10.1.0.0/16".
	Destination string
	// RouteType is RouteNextHop or RouteConnected.
	RouteType int
	// NextHop is an address, for RouteNextHop.
	NextHop string `json:",omitempty"`
}

// JoinResponse answers /NetworkDriver.Join.
type JoinResponse struct {
	ErrorResponse
	InterfaceName *InterfaceName `json:",omitempty"`
	// Gateway and GatewayIPv6 are addresses without prefix length; empty:
	// no default route through this endpoint.
	Gateway      string        `json:",omitempty"`
	GatewayIPv6  string        `json:",omitempty"`
	StaticRoutes []StaticRoute `json:",omitempty"`
	// DisableGatewayService asks the daemon not to connect the sandbox to
	// its own gateway network (Docker's docker_gwbridge).
	DisableGatewayService bool `json:",omitempty"`
}

// LeaveRequest is the body of /NetworkDriver.Leave.
type LeaveRequest struct {
	NetworkID  string
	EndpointID string
}

// DiscoveryNotification is the body of /NetworkDriver.DiscoverNew and
// /NetworkDriver.DiscoverDelete.
type DiscoveryNotification struct {
	DiscoveryType int
	// DiscoveryData is a [NodeDiscoveryData] for NodeDiscovery.
	DiscoveryData any
}

// NodeDiscoveryData describes a host of the cluster.
type NodeDiscoveryData struct {
	Address     string
	BindAddress string `json:",omitempty"`
	Self        bool
}

// TransportPort is an exposed port.
type TransportPort struct {
	Proto int // ProtoTCP, ProtoUDP or ProtoSCTP
	Port  uint16
}

// PortBinding publishes a container port on the host.
type PortBinding struct {
	Proto       int    // ProtoTCP, ProtoUDP or ProtoSCTP
	IP          string // the container's address
	Port        uint16 // the container's port
	HostIP      string // "": every host address
	HostPort    uint16
	HostPortEnd uint16
}

// ProgramExternalConnectivityRequest is the body of
// /NetworkDriver.ProgramExternalConnectivity.
type ProgramExternalConnectivityRequest struct {
	NetworkID  string
	EndpointID string
	// Options: OptionPortMap, OptionExposedPorts.
	Options map[string]any
}

// RevokeExternalConnectivityRequest is the body of
// /NetworkDriver.RevokeExternalConnectivity.
type RevokeExternalConnectivityRequest struct {
	NetworkID  string
	EndpointID string
}
