// Package protocol holds the messages of Docker's plugin protocol for
// network and IPAM drivers, with Docker's field names and JSON encoding, so
// that cnm talks to any plugin written for Docker (drivers/remote,
// ipam/remote) and serves cnm's drivers to Docker with the same types.
//
// The protocol is JSON over HTTP: every call is a POST to /<Interface>.<Method>
// (for example /NetworkDriver.CreateNetwork) with a JSON body, answered with
// a JSON body. A plugin reports a failure by a non-empty Err field in the
// answer, usually with an HTTP status of 500. The first call is
// /Plugin.Activate, whose answer lists the interfaces the plugin implements.
//
// Addresses travel as strings: an endpoint's address with its prefix length
// ("10.0.0.2/24"), a gateway alone or with its prefix length, depending on
// the call (each field says which). Options that Docker sends as free-form
// JSON objects are map[string]any here, as on the wire; the constants below
// name the keys that carry meaning.
package protocol

// ContentType is the media type of requests and answers in version 1.2 of
// the protocol, which Docker sends today. Plugins answer with any JSON media
// type (the plugin helpers answer version 1.1); clients accept any.
const ContentType = "application/vnd.docker.plugins.v1.2+json"

// Names of the interfaces a plugin implements, as /Plugin.Activate lists them.
const (
	NetworkDriver = "NetworkDriver"
	IpamDriver    = "IpamDriver"
)

// Paths of the calls. Each is the URL path of a POST.
const (
	PathActivate = "/Plugin.Activate"

	PathGetCapabilities             = "/NetworkDriver.GetCapabilities"
	PathCreateNetwork               = "/NetworkDriver.CreateNetwork"
	PathDeleteNetwork               = "/NetworkDriver.DeleteNetwork"
	PathAllocateNetwork             = "/NetworkDriver.AllocateNetwork"
	PathFreeNetwork                 = "/NetworkDriver.FreeNetwork"
	PathCreateEndpoint              = "/NetworkDriver.CreateEndpoint"
	PathEndpointOperInfo            = "/NetworkDriver.EndpointOperInfo"
	PathDeleteEndpoint              = "/NetworkDriver.DeleteEndpoint"
	PathJoin                        = "/NetworkDriver.Join"
	PathLeave                       = "/NetworkDriver.Leave"
	PathDiscoverNew                 = "/NetworkDriver.DiscoverNew"
	PathDiscoverDelete              = "/NetworkDriver.DiscoverDelete"
	PathProgramExternalConnectivity = "/NetworkDriver.ProgramExternalConnectivity"
	PathRevokeExternalConnectivity  = "/NetworkDriver.RevokeExternalConnectivity"

	PathIpamGetCapabilities     = "/IpamDriver.GetCapabilities"
	PathGetDefaultAddressSpaces = "/IpamDriver.GetDefaultAddressSpaces"
	PathRequestPool             = "/IpamDriver.RequestPool"
	PathReleasePool             = "/IpamDriver.ReleasePool"
	PathRequestAddress          = "/IpamDriver.RequestAddress"
	PathReleaseAddress          = "/IpamDriver.ReleaseAddress"
)

// ActivateResponse answers /Plugin.Activate (whose request body is empty).
type ActivateResponse struct {
	// Implements lists the interfaces the plugin serves: NetworkDriver,
	// IpamDriver, or others (VolumeDriver, ...) that cnm ignores.
	Implements []string
}

// ErrorResponse is the common part of every answer: a non-empty Err is the
// plugin's own description of why the call failed. Answers with other
// fields embed it.
type ErrorResponse struct {
	Err string `json:",omitempty"`
}

// PluginErr returns Err: the plugin's error text, empty on success. (It is
// not named Error, so that answers are not Go errors by accident.)
func (r ErrorResponse) PluginErr() string { return r.Err }
