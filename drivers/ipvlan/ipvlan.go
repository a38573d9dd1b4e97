// Package ipvlan is cnm's ipvlan driver: like macvlan it puts containers
// directly on a physical network, but every container shares the parent's
// MAC, which suits networks that allow one MAC per port. It keeps Docker's
// option keys: `parent`, `ipvlan_mode` (l2, l3) and
// com.docker.network.driver.mtu.
//
// Modes:
//   - l2: the containers are on the parent's layer-2 network; their gateway
//     is the physical network's router, from the network's IPAM data;
//   - l3: the parent routes; no ARP, no broadcast. The containers get a
//     default route through their interface (no gateway address), as
//     Docker gives them; a gateway in the IPAM data is not used.
//
// Kernel objects and their names are those of package macvlan: per joined
// endpoint an ipvlan link made at Join directly inside the sandbox in one
// request; an 802.1Q sub-interface made if the parent "eth1.50" is missing,
// deleted with the last network that uses it; an internal network's own
// parent "ipi-" and 11 characters of the network ID, a bridge without ports
// (see package parent). The kernel must have ipvlan (CONFIG_IPVLAN);
// without it Join fails with an error wrapping driverapi.ErrNotSupported.
//
// Like macvlan, the driver is the shared sub-interface driver (package
// subif), here with ipvlan's modes and its link type.
package ipvlan

import (
	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/internal/subif"
	"github.com/seed53641549/cnm/osl"
)

// NetworkType is the driver's name.
const NetworkType = "ipvlan"

// Config is what the driver needs from its controller.
type Config struct {
	// HostNS is the namespace the parent interfaces live in. Required.
	HostNS *osl.Namespace
	// Parents records which networks use which parent. Give the macvlan and
	// ipvlan drivers of one controller the same table, so that the two never
	// share a parent. Nil: the driver keeps a table of its own.
	Parents *parent.Table
}

// Register makes an ipvlan driver and registers it under [NetworkType].
func Register(r driverapi.Registerer, cfg Config) error {
	return subif.Register(r, kind(), subif.Config(cfg))
}

// New returns an ipvlan driver. Most programs call [Register] instead. It
// fails with an error wrapping driverapi.ErrInvalid if cfg has no HostNS.
func New(cfg Config) (driverapi.Driver, error) {
	return subif.New(kind(), subif.Config(cfg))
}
