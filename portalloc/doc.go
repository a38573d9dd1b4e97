// Package portalloc hands out the host ports of published container ports:
// `-p 8080:80`, `-p 8080-8090:80` and `-p 80` (an ephemeral host port).
//
// One [Allocator] serves one controller. It records which host ports its
// mappings hold, per protocol and host address, and refuses a second
// mapping of a port already held. With a host namespace configured, it also
// refuses a port that a process of that namespace holds, found by a bind
// test (see [Config.HostNS]).
//
// # Conflicts
//
// Two bindings of one port conflict when they have the same protocol and
// address family and either the same host address, or one of them is the
// unspecified address of the family (0.0.0.0 or ::, every address of the
// host). So tcp 0.0.0.0:8080 conflicts with tcp 10.0.0.1:8080 and the other
// way round, while tcp 10.0.0.1:8080 and tcp 10.0.0.2:8080 do not, and
// neither do tcp 0.0.0.0:8080, udp 0.0.0.0:8080 and tcp [::]:8080. The
// families are apart because each mapping is a DNAT rule of one family: a
// packet to 10.0.0.1 never matches a rule for ::.
//
// # Ephemeral ports
//
// A request without a port takes one from the ephemeral range
// ([Config.Ephemeral]) by next fit: the search starts after the port
// handed out last for the same protocol and family, and wraps at the end of
// the range. So ports are spread over the whole range, and a port just
// released is handed out again only once the search has gone round the
// whole range, or when it is the only one free. A first-fit allocator would
// hand the port released last straight to the next container, while the
// host's conntrack table may still hold entries of its previous user (stale
// UDP entries send traffic to a dead container); a random choice spreads as
// well but can repeat a port at once, and makes tests and logs harder to
// follow. The search looks at each port of the range at most once per
// request, a map lookup each, under the allocator's lock. The common case
// finds the port it starts at free: with 0 or 1,000 ports held an
// allocation costs the same (BenchmarkAllocate). The worst case, one free
// port in the default range of 16,383, scans the whole range: about 1 ms
// under the race detector.
//
// A request with a range (Port..PortEnd) takes the first free port of the
// range, as Docker does: a user who writes 8080-8090 expects 8080 first.
package portalloc
