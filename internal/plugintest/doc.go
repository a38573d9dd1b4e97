// Package plugintest serves Docker-protocol plugins for cnm's tests,
// benchmarks and examples: a network plugin and an IPAM plugin written with
// Docker's own SDK (github.com/docker/go-plugins-helpers), as third parties
// write theirs, and a front that breaks chosen calls on the wire (malformed
// JSON, HTTP errors, huge answers, hangs).
//
// The network plugin ([VethPlugin]) does what real plugins do: a Linux
// bridge per network in the host namespace it is given, with the gateway
// address, and at Join a veth pair whose one end is on the bridge and whose
// other it names for the daemon to move into the sandbox. It uses netlink
// handles bound to that namespace and never switches a thread's namespace.
//
// Every plugin records the calls it received, with their decoded requests.
package plugintest
