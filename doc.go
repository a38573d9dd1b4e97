// Package cnm is an embeddable implementation of the Container Network Model,
// the design behind Docker's libnetwork.
//
// A [Controller] makes [Network]s (software switches), [Sandbox]es (isolated
// network stacks: network namespaces) and [Endpoint]s (interfaces that attach
// one sandbox to one network). Drivers do the data plane: the bridge, null
// and host drivers are registered by [New]. All kernel work goes through
// netlink, inside the controller's host namespace and the sandboxes'
// namespaces; nothing runs `ip` or `iptables`.
//
// A typical runtime:
//
//	ctrl, err := cnm.New(cnm.WithHostNamespace("/run/netns/host1"))
//	nw, err := ctrl.NewNetwork(ctx, "bridge", "frontend",
//		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.10.0.0/24")}))
//	sb, err := ctrl.NewSandbox(ctx, "container-1", cnm.WithHostname("web"))
//	ep, err := nw.CreateEndpoint(ctx, "web")
//	err = ep.Join(ctx, sb)
//	// start the container's processes in the namespace sb.Key()
//
// Every operation is all or nothing: one that fails leaves no link,
// namespace, rule, address or record behind. Bad input is reported before
// any kernel object is made, with an error that names the field and the value
// and matches [ErrInvalid] (or [ErrExists], [ErrNotFound], [ErrInUse]) under
// errors.Is. Every object is safe for concurrent use; joins of different
// sandboxes run in parallel.
package cnm
