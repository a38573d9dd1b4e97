package macvlan

import (
	"context"

	"github.com/seed53641549/cnm/internal/subif"
	"github.com/seed53641549/cnm/osl"
)

// kind is what makes the sub-interface driver a macvlan driver.
func kind() subif.Kind[osl.MacvlanMode] {
	return subif.Kind[osl.MacvlanMode]{
		Type:           NetworkType,
		InternalPrefix: "mvi-",
		ModeOption:     OptionMode,
		Modes: []subif.Mode[osl.MacvlanMode]{
			{Name: "bridge", Value: osl.MacvlanBridge},
			{Name: "private", Value: osl.MacvlanPrivate},
			{Name: "vepa", Value: osl.MacvlanVEPA},
			// One link takes the parent over: the network has it alone.
			{Name: "passthru", Value: osl.MacvlanPassthru, Exclusive: true},
		},
		OwnMAC:       true,
		NeedsGateway: "a macvlan network with a parent",
		AddLink: func(ctx context.Context, host *osl.Namespace, s subif.LinkSpec[osl.MacvlanMode]) error {
			return host.AddMacvlan(ctx, osl.MacvlanSpec{Name: s.Name, ParentIndex: s.ParentIndex, NS: s.NS, Mode: s.Mode, MAC: s.MAC, MTU: s.MTU})
		},
	}
}
