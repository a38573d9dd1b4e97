package cnm

import (
	"context"
	"errors"
)

// Names of the steps of multi-step operations. A fault hook (tests only, see
// export_test.go) can fail any of them to prove that the operation rolls
// back completely.
const (
	stepNetworkIPAM   = "network:ipam"
	stepNetworkDriver = "network:driver"
	stepNetworkGlobal = "network:global" // a global network's record in etcd
	// Around the record's transaction: fail as a request lost on its way
	// (never applied) and as a lost answer (applied) would.
	stepNetworkGlobalSend   = "network:global-send"
	stepNetworkGlobalAnswer = "network:global-answer"
	stepNetworkCommit       = "network:commit"

	stepEndpointIPv4    = "endpoint:ipv4"
	stepEndpointIPv6    = "endpoint:ipv6"
	stepEndpointService = "endpoint:service"
	stepEndpointDriver  = "endpoint:driver"
	stepEndpointGlobal  = "endpoint:global" // a global network's endpoint in the peer table
	stepEndpointCommit  = "endpoint:commit"

	stepJoinDriver    = "join:driver"
	stepJoinInterface = "join:interface"
	stepJoinRoutes    = "join:routes"
	stepJoinGateway   = "join:gateway"
	stepGatewayIPv6   = "join:gateway-ipv6" // inside the gateway update, between families
	stepJoinHosts     = "join:hosts"
	stepJoinExternal  = "join:external"
	stepJoinDNS       = "join:dns"
	stepJoinServices  = "join:services"
	stepJoinCommit    = "join:commit"

	stepLeave                  = "leave:interface"         // fails as taking the interface out of use would
	stepLeaveDriver            = "leave:recorded"          // crash point: after the interface is out of use, before the record
	stepNetworkDelete          = "network-delete:driver"   // fails as the driver's delete would
	stepSandboxDetach          = "sandbox-delete:detach"   // fails as withdrawing published ports would
	stepNetworkDeleted         = "network-delete:recorded" // crash point: after the driver's delete, before the record
	stepSandboxDeleteNamespace = "sandbox-delete:namespace"
	stepReapDriver             = "reap:driver" // fails a background removal as the driver's Leave would

	stepSandboxNamespace = "sandbox:namespace"
	stepSandboxFiles     = "sandbox:files"
	stepSandboxCommit    = "sandbox:commit"
)

// step is called before each step of a multi-step operation. In production
// it only checks the context; tests set faultHook to fail a chosen step.
func (c *Controller) step(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if hook := c.faultHook.Load(); hook != nil {
		return (*hook)(name)
	}
	return nil
}

// crashPoint calls the fault hook at a point past which the operation
// cannot fail any more (its kernel change is made, only its record is left
// to write). A hook that kills the process tests crash recovery there; an
// error it returns is ignored, as the context is: failing here would leave
// the kernel changed and the controller's state not.
func (c *Controller) crashPoint(name string) {
	if hook := c.faultHook.Load(); hook != nil {
		_ = (*hook)(name)
	}
}

// A step is one step of a multi-step operation: what it does, and how to
// undo it if a later step fails. A step whose do fails cleans up after
// itself: only the steps before it are undone.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error // nil: nothing to undo
}

// run runs steps in order. Before each it checks ctx and the fault hook;
// if a step fails, the undos of the steps done so far run in reverse order,
// with a context that is not cancelled (an undo must finish), and the
// step's error is returned. An undo that fails is logged: what it could not
// undo stays, and the operation's own error is what the caller needs.
func (c *Controller) run(ctx context.Context, steps ...step) error {
	for i, s := range steps {
		var err error
		if s.name != "" { // a step made by together checks its own
			err = c.step(ctx, s.name)
		}
		if err == nil {
			err = s.do(ctx)
		}
		if err == nil {
			continue
		}
		uctx := context.WithoutCancel(ctx)
		for j := i - 1; j >= 0; j-- {
			if u := steps[j].undo; u != nil {
				if uerr := u(uctx); uerr != nil {
					c.log.Warn("cnm: rollback", "step", steps[j].name, "err", uerr)
				}
			}
		}
		return err
	}
	return nil
}

// together makes one step of two independent ones that run side by side,
// for steps that mostly wait on the kernel or a disk: the step takes as
// long as the slower of the two, not their sum. If either fails, the
// other, if it succeeded, is undone; the step's undo undoes both.
func (c *Controller) together(a, b step) step {
	run := func(ctx context.Context, s step) error {
		if err := c.step(ctx, s.name); err != nil {
			return err
		}
		return s.do(ctx)
	}
	undo := func(ctx context.Context, s step) error {
		if s.undo == nil {
			return nil
		}
		return s.undo(ctx)
	}
	return step{
		do: func(ctx context.Context) error {
			errb := make(chan error, 1)
			go func() { errb <- run(ctx, b) }()
			ea, eb := run(ctx, a), <-errb
			uctx := context.WithoutCancel(ctx)
			switch {
			case ea != nil && eb == nil:
				if err := undo(uctx, b); err != nil {
					c.log.Warn("cnm: rollback", "step", b.name, "err", err)
				}
			case ea == nil && eb != nil:
				if err := undo(uctx, a); err != nil {
					c.log.Warn("cnm: rollback", "step", a.name, "err", err)
				}
			}
			if ea != nil {
				return ea
			}
			return eb
		},
		undo: func(ctx context.Context) error {
			return errors.Join(undo(ctx, b), undo(ctx, a))
		},
	}
}
