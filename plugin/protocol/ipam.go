package protocol

// Keys of IPAM request options and answer data, as Docker names them.
const (
	// OptionRequestAddressType (RequestAddress Options) says what the
	// address is for; RequestAddressTypeGateway marks a network's gateway.
	OptionRequestAddressType  = "RequestAddressType"
	RequestAddressTypeGateway = "com.docker.network.gateway"
	// DataGateway (RequestPool Data) is a gateway the plugin proposes for
	// the pool, with prefix length.
	DataGateway = "com.docker.network.gateway"
)

// IpamCapabilitiesResponse answers /IpamDriver.GetCapabilities (empty
// request).
type IpamCapabilitiesResponse struct {
	ErrorResponse
	// RequiresMACAddress: the plugin wants the endpoint's MAC in
	// RequestAddress options.
	RequiresMACAddress bool
	// RequiresRequestReplay: the plugin keeps no state across restarts, so
	// the daemon asks for every pool and address again when it starts.
	RequiresRequestReplay bool `json:",omitempty"`
}

// AddressSpacesResponse answers /IpamDriver.GetDefaultAddressSpaces (empty
// request).
type AddressSpacesResponse struct {
	ErrorResponse
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

// RequestPoolRequest is the body of /IpamDriver.RequestPool.
type RequestPoolRequest struct {
	AddressSpace string
	// Pool is the subnet asked for ("10.0.0.0/24"); empty: any.
	Pool string
	// SubPool restricts dynamic addresses to this part of Pool; empty: all.
	SubPool string
	Options map[string]string
	V6      bool
}

// RequestPoolResponse answers /IpamDriver.RequestPool.
type RequestPoolResponse struct {
	ErrorResponse
	PoolID string
	// Pool is the subnet reserved, "10.0.0.0/24".
	Pool string
	// Data may hold DataGateway.
	Data map[string]string
}

// ReleasePoolRequest is the body of /IpamDriver.ReleasePool.
type ReleasePoolRequest struct {
	PoolID string
}

// RequestAddressRequest is the body of /IpamDriver.RequestAddress.
type RequestAddressRequest struct {
	PoolID string
	// Address is the address asked for, without prefix length; empty: any.
	Address string
	Options map[string]string
}

// RequestAddressResponse answers /IpamDriver.RequestAddress.
type RequestAddressResponse struct {
	ErrorResponse
	// Address is the address allocated, with the pool's prefix length,
	// "10.0.0.2/24".
	Address string
	Data    map[string]string
}

// ReleaseAddressRequest is the body of /IpamDriver.ReleaseAddress.
type ReleaseAddressRequest struct {
	PoolID  string
	Address string
}
