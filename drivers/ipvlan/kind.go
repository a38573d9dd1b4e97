package ipvlan

import (
	"context"

	"github.com/seed53641549/cnm/internal/subif"
	"github.com/seed53641549/cnm/osl"
)

// kind is what makes the sub-interface driver an ipvlan driver. Docker's
// l3s mode and ipvlan_flag option are not supported (yet): they are
// rejected, not ignored.
func kind() subif.Kind[osl.IPvlanMode] {
	return subif.Kind[osl.IPvlanMode]{
		Type:           NetworkType,
		InternalPrefix: "ipi-",
		ModeOption:     OptionMode,
		Modes: []subif.Mode[osl.IPvlanMode]{
			{Name: "l2", Value: osl.IPvlanL2},
			{Name: "l3", Value: osl.IPvlanL3, Routed: true},
		},
		OwnMAC:         false, // an ipvlan link always has its parent's MAC
		KernelOptional: true,
		NeedsGateway:   "an l2 ipvlan network with a parent",
		AddLink: func(ctx context.Context, host *osl.Namespace, s subif.LinkSpec[osl.IPvlanMode]) error {
			return host.AddIPvlan(ctx, osl.IPvlanSpec{Name: s.Name, ParentIndex: s.ParentIndex, NS: s.NS, Mode: s.Mode, MTU: s.MTU})
		},
	}
}
