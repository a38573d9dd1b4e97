package cnm

import "context"

// Names of the steps of multi-step operations. A fault hook (tests only, see
// export_test.go) can fail any of them to prove that the operation rolls
// back completely.
const (
	stepNetworkIPAM   = "network:ipam"
	stepNetworkDriver = "network:driver"
	stepNetworkCommit = "network:commit"

	stepEndpointIPv4   = "endpoint:ipv4"
	stepEndpointIPv6   = "endpoint:ipv6"
	stepEndpointDriver = "endpoint:driver"
	stepEndpointCommit = "endpoint:commit"

	stepJoinDriver    = "join:driver"
	stepJoinInterface = "join:interface"
	stepJoinRoutes    = "join:routes"
	stepJoinGateway   = "join:gateway"
	stepGatewayIPv6   = "join:gateway-ipv6" // inside the gateway update, between families
	stepJoinHosts     = "join:hosts"
	stepJoinExternal  = "join:external"
	stepJoinCommit    = "join:commit"

	stepLeave                  = "leave:driver"            // fails as the driver's leave would
	stepLeaveDriver            = "leave:recorded"          // after the driver's leave, before the record
	stepNetworkDelete          = "network-delete:driver"   // fails as the driver's delete would
	stepSandboxDetach          = "sandbox-delete:detach"   // fails as a driver's leave would
	stepNetworkDeleted         = "network-delete:recorded" // after the driver's delete, before the record
	stepSandboxDeleteNamespace = "sandbox-delete:namespace"

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
	if c.faultHook != nil {
		return c.faultHook(name)
	}
	return nil
}
