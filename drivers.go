package cnm

import (
	"errors"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/bridge"
	"github.com/seed53641549/cnm/drivers/host"
	"github.com/seed53641549/cnm/drivers/ipvlan"
	"github.com/seed53641549/cnm/drivers/macvlan"
	"github.com/seed53641549/cnm/drivers/null"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

// registerBuiltinDrivers registers the drivers every controller has, for
// the host namespace hostNS and the controller's firewall.
func registerBuiltinDrivers(r driverapi.Registerer, hostNS *osl.Namespace, fw *firewall.Firewall) error {
	// macvlan and ipvlan share one table of parent interfaces, so the two
	// never claim the same parent (the kernel lets only one of them have it).
	parents := parent.New(hostNS)
	return errors.Join(
		bridge.Register(r, bridge.Config{HostNS: hostNS, Firewall: fw}),
		null.Register(r),
		host.Register(r, hostNS),
		macvlan.Register(r, macvlan.Config{HostNS: hostNS, Parents: parents}),
		ipvlan.Register(r, ipvlan.Config{HostNS: hostNS, Parents: parents}),
	)
}
