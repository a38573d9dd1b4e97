// Package macvlan is cnm's macvlan driver: it puts containers directly on a
// physical network. Each joined endpoint is a macvlan link on the network's
// parent interface, with a MAC of its own, so the container appears on the
// parent's network as a host of its own, and its gateway is the physical
// network's router. It keeps Docker's option keys: `parent`, `macvlan_mode`
// and com.docker.network.driver.mtu.
//
// Kernel objects and their names:
//   - per joined endpoint, a macvlan link made at Join directly inside the
//     sandbox in one netlink request, already named eth0, eth1, ..., with
//     the endpoint's MAC; it goes with Leave, or with the sandbox;
//   - the parent is the user's interface and is never changed, except: an
//     802.1Q sub-interface ("eth1.50") that does not exist is made, and
//     deleted with the last network that uses it; an internal network (no
//     parent) gets its own parent "mvi-" and 11 characters of the network
//     ID, a bridge without ports (see package parent), deleted with it.
//
// Nothing is made in the host namespace for an endpoint, and the host cannot
// reach its own macvlan containers through the parent: that is how macvlan
// works (the parent's own traffic is not switched to its macvlan links).
//
// The driver is the shared sub-interface driver (package subif) with
// macvlan's modes and its link type.
package macvlan

import (
	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/internal/subif"
	"github.com/seed53641549/cnm/osl"
)

// NetworkType is the driver's name.
const NetworkType = "macvlan"

// Config is what the driver needs from its controller.
type Config struct {
	// HostNS is the namespace the parent interfaces live in. Required.
	HostNS *osl.Namespace
	// Parents records which networks use which parent. Give the macvlan and
	// ipvlan drivers of one controller the same table, so that the two never
	// share a parent. Nil: the driver keeps a table of its own.
	Parents *parent.Table
}

// Register makes a macvlan driver and registers it under [NetworkType].
func Register(r driverapi.Registerer, cfg Config) error {
	return subif.Register(r, kind(), subif.Config(cfg))
}

// New returns a macvlan driver. Most programs call [Register] instead. It
// fails with an error wrapping driverapi.ErrInvalid if cfg has no HostNS.
func New(cfg Config) (driverapi.Driver, error) {
	return subif.New(kind(), subif.Config(cfg))
}
