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
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

// builtinConfig is what the built-in drivers need from their controller.
type builtinConfig struct {
	hostNS   *osl.Namespace
	firewall *firewall.Firewall
	owner    mark.Owner
	// leaveHostSysctls: the runtime manages host-wide sysctls itself.
	leaveHostSysctls bool
}

// registerBuiltinDrivers registers the drivers every controller has.
func registerBuiltinDrivers(r driverapi.Registerer, cfg builtinConfig) error {
	// macvlan and ipvlan share one table of parent interfaces, so the two
	// never claim the same parent (the kernel lets only one of them have it).
	parents := parent.New(cfg.hostNS, cfg.owner)
	return errors.Join(
		bridge.Register(r, bridge.Config{HostNS: cfg.hostNS, Firewall: cfg.firewall, Owner: cfg.owner, LeaveHostSysctls: cfg.leaveHostSysctls}),
		null.Register(r),
		host.Register(r, cfg.hostNS),
		macvlan.Register(r, macvlan.Config{HostNS: cfg.hostNS, Parents: parents}),
		ipvlan.Register(r, ipvlan.Config{HostNS: cfg.hostNS, Parents: parents}),
	)
}
