// Package plugin finds and calls Docker-protocol plugins: separate processes
// that serve network or IPAM drivers as JSON over HTTP, usually on a unix
// socket (see package [github.com/seed53641549/cnm/plugin/protocol] for the
// messages).
//
// [Discovery] finds a plugin by name the way Docker does: a unix socket
// <name>.sock in the socket directories (/run/docker/plugins), else a
// <name>.spec or <name>.json file in the spec directories
// (/etc/docker/plugins, /usr/lib/docker/plugins) that holds its address.
// [Client] calls it: one timeout per call, retries only for calls that
// change nothing, a bound on the size of answers, and errors of type
// [*CallError] that name the plugin and the call and wrap [ErrUnavailable],
// [ErrProtocol] or [ErrPlugin].
//
// The client looks the plugin's address up again whenever it opens a
// connection, so a plugin that restarts, even on another socket, is reached
// again without anything being done.
package plugin
