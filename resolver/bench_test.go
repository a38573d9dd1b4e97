package resolver_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/resolver"
)

// The benchmarks measure without the race detector, inside a fresh
// network namespace as the tests run (as root):
//
//	unshare --net --mount sh -c 'mount --make-rprivate / && ip link set lo up &&
//	  go test -run "^$" -bench . -benchtime 10x ./resolver'
//
// BenchmarkLocalQPS and BenchmarkForwardLatency run both contenders in
// the same process, interleaved, and report the medians (or percentiles)
// of each as custom metrics; ns/op is the time of one round.

// startPlain starts a plain miekg/dns server on addr inside ns that
// answers every query with one static A record: the baseline of
// BenchmarkLocalQPS.
func startPlain(b *testing.B, ns *osl.Namespace, addr netip.AddrPort) {
	var pc net.PacketConn
	require.NoError(b, ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}))
	rr, err := dns.NewRR("web. 600 IN A 172.18.0.2")
	require.NoError(b, err)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = []dns.RR{rr}
		_ = w.WriteMsg(r)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	b.Cleanup(func() { _ = srv.Shutdown() })
}

// qps sends n copies of the query raw to addr from clients sockets inside
// ns, each client one query at a time, and returns the answers per second.
func qps(b *testing.B, ns *osl.Namespace, addr netip.AddrPort, raw []byte, clients, n int) float64 {
	conns := make([]net.Conn, clients)
	for i := range conns {
		conns[i] = dialIn(b, ns, "udp", addr)
	}
	var wg sync.WaitGroup
	begin := time.Now()
	for _, c := range conns {
		wg.Go(func() {
			q := slices.Clone(raw)
			buf := make([]byte, 512)
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			for i := range n / clients {
				binary.BigEndian.PutUint16(q, uint16(i))
				if _, err := c.Write(q); err != nil {
					b.Error(err)
					return
				}
				if _, err := c.Read(buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	for _, c := range conns {
		c.Close()
	}
	return float64(n) / elapsed.Seconds()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkLocalQPS: queries per second for a local name, from inside the
// sandbox, against a plain miekg/dns server answering a static record in
// the same namespace. One round: 20,000 queries to each, from 4 clients,
// in alternating order.
func BenchmarkLocalQPS(b *testing.B) {
	ns := newNS(b)
	start(b, ns, resolver.Config{Names: testNames()})
	plain := netip.MustParseAddrPort("127.0.0.12:53")
	startPlain(b, ns, plain)
	raw, err := question("web.", dns.TypeA).Pack()
	require.NoError(b, err)
	const clients, n = 4, 20000
	qps(b, ns, resolverAddr, raw, clients, 2000) // warm up
	qps(b, ns, plain, raw, clients, 2000)
	var ours, theirs []float64
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			ours = append(ours, qps(b, ns, resolverAddr, raw, clients, n))
			theirs = append(theirs, qps(b, ns, plain, raw, clients, n))
		} else {
			theirs = append(theirs, qps(b, ns, plain, raw, clients, n))
			ours = append(ours, qps(b, ns, resolverAddr, raw, clients, n))
		}
	}
	b.ReportMetric(median(ours), "resolver-qps")
	b.ReportMetric(median(theirs), "plain-qps")
	b.ReportMetric(median(ours)/median(theirs), "ratio")
}

// once sends one query over the connected socket c and waits for its answer.
func once(b *testing.B, c net.Conn, q []byte, id uint16, buf []byte) time.Duration {
	binary.BigEndian.PutUint16(q, id)
	begin := time.Now()
	if _, err := c.Write(q); err != nil {
		b.Fatal(err)
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == id {
			return time.Since(begin)
		}
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkForwardLatency: the latency of a query forwarded by the
// resolver to an upstream in the outside namespace, against the same
// query sent by the sandbox to that upstream directly. One iteration: one
// query each way, in alternating order, one at a time.
func BenchmarkForwardLatency(b *testing.B) {
	w := newWorld(b)
	newUpstream(b, w.out, up1, answer("192.0.2.7"))
	start(b, w.sb, resolver.Config{Upstreams: upstreams(up1), Forward: true})
	fwd := dialIn(b, w.sb, "udp", resolverAddr)
	direct := dialIn(b, w.sb, "udp", netip.AddrPortFrom(up1, 53))
	_ = fwd.SetDeadline(time.Now().Add(time.Hour))
	_ = direct.SetDeadline(time.Now().Add(time.Hour))
	q, err := question("example.com.", dns.TypeA).Pack()
	require.NoError(b, err)
	buf := make([]byte, 512)
	for i := range 200 { // warm up
		once(b, fwd, q, uint16(i), buf)
		once(b, direct, q, uint16(i), buf)
	}
	var viaResolver, viaDirect []time.Duration
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			viaResolver = append(viaResolver, once(b, fwd, q, uint16(i), buf))
			viaDirect = append(viaDirect, once(b, direct, q, uint16(i), buf))
		} else {
			viaDirect = append(viaDirect, once(b, direct, q, uint16(i), buf))
			viaResolver = append(viaResolver, once(b, fwd, q, uint16(i), buf))
		}
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(percentile(viaResolver, 0.5)), "fwd-p50-µs")
	b.ReportMetric(us(percentile(viaDirect, 0.5)), "direct-p50-µs")
	b.ReportMetric(us(percentile(viaResolver, 0.99)), "fwd-p99-µs")
	b.ReportMetric(us(percentile(viaDirect, 0.99)), "direct-p99-µs")
	b.ReportMetric(us(percentile(viaResolver, 0.99)-percentile(viaDirect, 0.99)), "p99-added-µs")
}

// rss returns the process's resident set size in bytes.
func rss(b *testing.B) uint64 {
	s, err := os.ReadFile("/proc/self/status")
	require.NoError(b, err)
	for _, l := range strings.Split(string(s), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			require.NoError(b, err)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// memory is what the Go runtime holds: the live heap (after a GC) and the
// goroutine stacks.
type memory struct {
	heap, heapInuse, stacks, rss uint64
	goroutines                   int
}

func measure(b *testing.B) memory {
	for range 3 { // stacks shrink over several cycles
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heap: ms.HeapAlloc, heapInuse: ms.HeapInuse, stacks: ms.StackInuse, rss: rss(b), goroutines: runtime.NumGoroutine()}
}

// BenchmarkServerMemory starts 1,000 servers, each in a namespace of its
// own as in 1,000 sandboxes, and reports what each costs the process: Go
// heap and goroutine stacks, measured after every server answered a query
// (so its goroutines ran the query path once) and after GC. The
// namespaces are made before the first measure, so their own cost (the
// sandbox's, not the resolver's) is left out. Kernel memory for the two
// sockets of each server is not in these figures.
func BenchmarkServerMemory(b *testing.B) {
	const n = 1000
	if os.Geteuid() != 0 {
		b.Skip("needs root: makes network namespaces")
	}
	dir := b.TempDir()
	raw, err := question("web.", dns.TypeA).Pack()
	require.NoError(b, err)
	for b.Loop() {
		nss := make([]*osl.Namespace, n)
		for i := range nss {
			ns, err := osl.NewNamespace(context.Background(), filepath.Join(dir, fmt.Sprintf("ns%d", i)))
			require.NoError(b, err)
			nss[i] = ns
		}
		names := testNames()
		before := measure(b)
		servers := make([]*resolver.Server, n)
		for i, ns := range nss {
			s, err := resolver.Start(ns, resolver.Config{Names: names, Upstreams: upstreams(up1), Forward: true})
			require.NoError(b, err)
			servers[i] = s
		}
		started := measure(b)
		for _, ns := range nss { // one query each
			c := dialIn(b, ns, "udp", resolverAddr)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := c.Write(raw)
			require.NoError(b, err)
			_, err = c.Read(make([]byte, 512))
			require.NoError(b, err)
			c.Close()
		}
		used := measure(b)
		for _, s := range servers {
			require.NoError(b, s.Close())
		}
		for _, ns := range nss {
			require.NoError(b, ns.Delete())
		}
		per := func(m memory) float64 { return float64(m.heap+m.stacks-before.heap-before.stacks) / n }
		b.ReportMetric(per(started), "B/server-started")
		b.ReportMetric(per(used), "B/server")
		b.ReportMetric(float64(used.heapInuse+used.stacks-before.heapInuse-before.stacks)/n, "B-inuse/server")
		b.ReportMetric(float64(used.stacks-before.stacks)/n, "B-stack/server")
		b.ReportMetric(float64(int64(used.rss)-int64(before.rss))/n, "B-rss/server")
		b.ReportMetric(float64(used.goroutines-before.goroutines)/n, "goroutines/server")
	}
}
