// Package resolver is the embedded DNS server of a sandbox: the server a
// container finds at 127.0.0.11, as on Docker's user-defined networks.
//
// A [Server] answers the names its [Names] knows (A, AAAA and PTR) and
// forwards every other query to the sandbox's upstream servers. Start opens
// its sockets from a thread switched into the sandbox's network namespace
// (osl.Namespace.Do), so it listens on the sandbox's own loopback and its
// forwarded queries leave from the sandbox, through the sandbox's routes and
// firewall, as the container's own queries would. The sockets belong to the
// namespace from then on and are served by ordinary goroutines: no thread
// stays in the namespace.
//
// # Built for many sandboxes
//
// One process serves every sandbox of a host, so an idle Server costs only
// what it must: two sockets and two goroutines (one reads UDP, one accepts
// TCP), blocked in the runtime's poller. The UDP reader takes a buffer from
// a pool shared by all servers only once a datagram is waiting, so an idle
// server holds no buffer.
//
// # Bounded under load
//
// A local name is answered on the reading goroutine itself: no goroutine
// per query. A forwarded query gets a goroutine of its own, and at most
// [Config.MaxInFlight] of them run at once per server; a query beyond that
// is answered SERVFAIL at once instead of queueing. TCP clients get one
// goroutine per connection, at most [MaxTCPConns] connections per server,
// each closed when idle. So a flood of queries costs a bounded number of
// goroutines and buffers, and the server keeps answering local names
// through it.
//
// # Forwarding
//
// A forwarded query is relayed as the client sent it, but for its ID, which
// is replaced by a random one on the way up (the connected socket of each
// query also has a random source port) and restored on the way back.
// The answer is relayed as the upstream sent it, so it keeps the upstream's
// compression and the client's EDNS0 size limit. Over UDP, a truncated
// answer is asked again over TCP; a query that came over TCP goes up over
// TCP. Each upstream is tried in order, each attempt bounded by
// [Config.Timeout]; an upstream that fails, times out or answers SERVFAIL
// or REFUSED passes the query to the next one, and when none is left the
// client gets SERVFAIL (or the last upstream's own error answer).
package resolver
