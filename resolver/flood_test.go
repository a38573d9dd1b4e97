package resolver_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/resolver"
)

// stackBuf holds the dumps of serverGoroutines, kept so that sampling
// does not show up in the heap it samples.
var stackBuf = make([]byte, 4<<20)

// serverGoroutines counts the goroutines that servers started. Not safe
// for concurrent use.
func serverGoroutines() int {
	buf := stackBuf[:runtime.Stack(stackBuf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("created by github.com/seed53641549/cnm/resolver.")) {
			n++
		}
	}
	return n
}

// watch samples the server's goroutines and the heap until stop is closed,
// and returns the peaks.
func watch(stop <-chan struct{}) (peak func() (goroutines int, heap uint64)) {
	var mu sync.Mutex
	var g int
	var h uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n := serverGoroutines()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mu.Lock()
			g, h = max(g, n), max(h, ms.HeapInuse)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() (int, uint64) {
		<-done
		return g, h
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// flood sends total queries from clients sockets inside ns, each client
// one query at a time; kind(i) says what query i is. It returns how many
// well-formed queries went unanswered, and the rcodes seen.
func flood(t *testing.T, ns *osl.Namespace, clients, total int, kind func(i int) (raw []byte, wellFormed bool)) (unanswered int64, rcodes map[int]int) {
	require.Zero(t, total%clients)
	var lost atomic.Int64
	var mu sync.Mutex
	rcodes = map[int]int{}
	var wg sync.WaitGroup
	per := total / clients
	for c := range clients {
		conn := dialIn(t, ns, "udp", resolverAddr)
		wg.Go(func() {
			buf := make([]byte, 4096)
			for i := c * per; i < (c+1)*per; i++ {
				raw, wellFormed := kind(i)
				id := uint16(i%65535 + 1) // 0: the garbage's
				if wellFormed {
					binary.BigEndian.PutUint16(raw, id)
				}
				if _, err := conn.Write(raw); err != nil {
					lost.Add(1)
					continue
				}
				if !wellFormed {
					continue
				}
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				for {
					n, err := conn.Read(buf)
					if err != nil {
						lost.Add(1)
						break
					}
					if n >= 12 && binary.BigEndian.Uint16(buf) == id {
						mu.Lock()
						rcodes[int(buf[3]&0x0f)]++
						mu.Unlock()
						break
					}
				}
			}
		})
	}
	wg.Wait()
	return lost.Load(), rcodes
}

// TestFlood sends 10,000 queries from inside the sandbox, 20 clients at a
// time, a mix of local names, forwarded names and garbage: every
// well-formed query is answered. Then 10,000 more from 50 clients, one in
// ten to an upstream that never answers: each of those is answered
// SERVFAIL, at once when MaxInFlight are already waiting, and the local
// names are answered at once all along. The server's goroutines stay
// within MaxInFlight, the heap stays bounded, and both come back
// afterwards.
func TestFlood(t *testing.T) {
	w := newWorld(t)
	newUpstream(t, w.out, up1, answer("192.0.2.7"))
	newUpstream(t, w.out, up2, never)
	const maxInFlight = 32
	s := start(t, w.sb, resolver.Config{Names: testNames(), Upstreams: upstreams(up1), Forward: true, Timeout: 200 * time.Millisecond, MaxInFlight: maxInFlight})
	pack := func(name string) []byte {
		b, err := question(name, dns.TypeA).Pack()
		require.NoError(t, err)
		return b
	}
	garbage := []byte{0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1}
	heap0 := heapInuse()
	base := serverGoroutines()
	require.Equal(t, 2, base, "an idle server: a UDP reader and a TCP acceptor")
	// A handler that has given its slot back is still on the stack for a
	// few instructions: a sample may see that many more than MaxInFlight.
	const exiting = 2

	t.Run("mixed", func(t *testing.T) {
		stop := make(chan struct{})
		peak := watch(stop)
		lost, rcodes := flood(t, w.sb, 20, 10000, func(i int) ([]byte, bool) {
			switch i % 10 {
			case 0:
				return append([]byte(nil), garbage...), false
			case 1, 2, 3:
				return pack("example.com."), true
			default:
				return pack("web."), true
			}
		})
		close(stop)
		g, h := peak()
		t.Logf("answers by rcode: %v; peak: %d server goroutines, heap in use %d KiB (before: %d KiB)", rcodes, g, h>>10, heap0>>10)
		assert.Zero(t, lost, "well-formed queries without an answer")
		assert.Equal(t, map[int]int{dns.RcodeSuccess: 9000}, rcodes)
		assert.LessOrEqual(t, g, base+maxInFlight+exiting)
		assert.Less(t, h, heap0+16<<20, "heap grew by more than 16 MiB")
	})

	t.Run("silent upstream", func(t *testing.T) {
		s.Update(resolver.Config{Names: testNames(), Upstreams: upstreams(up2), Forward: true, Timeout: 200 * time.Millisecond, MaxInFlight: maxInFlight})
		stop := make(chan struct{})
		peak := watch(stop)
		var slowLocal atomic.Int64
		localDone := make(chan struct{})
		go func() { // a client that asks a local name all along
			defer close(localDone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				begin := time.Now()
				m, err := exchange(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA), time.Second)
				if err != nil || len(m.Answer) != 1 || time.Since(begin) > 500*time.Millisecond {
					slowLocal.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		lost, rcodes := flood(t, w.sb, 50, 10000, func(i int) ([]byte, bool) {
			if i%10 == 0 {
				return pack("example.com."), true
			}
			return pack("web."), true
		})
		close(stop)
		<-localDone
		g, h := peak()
		t.Logf("answers by rcode: %v; peak: %d server goroutines, heap in use %d KiB (before: %d KiB)", rcodes, g, h>>10, heap0>>10)
		assert.Zero(t, lost, "queries without an answer")
		assert.Equal(t, map[int]int{dns.RcodeSuccess: 9000, dns.RcodeServerFailure: 1000}, rcodes)
		assert.Zero(t, slowLocal.Load(), "local queries slow or unanswered during the flood")
		assert.LessOrEqual(t, g, base+maxInFlight+exiting)
		assert.Less(t, h, heap0+16<<20, "heap grew by more than 16 MiB")
	})

	// Everything in flight is over within the timeout.
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, base, serverGoroutines())
	heap1 := heapInuse()
	t.Logf("heap in use after the floods: %d KiB (before: %d KiB)", heap1>>10, heap0>>10)
	assert.Less(t, heap1, heap0+8<<20, "heap grew by more than 8 MiB")
}

// TestCloseInFlight closes a server while forwarded queries wait for a
// silent upstream (over UDP and TCP) and TCP clients idle: Close returns
// at once, the TCP clients see their connections closed, and every
// goroutine of the server is gone. Then the same with the sandbox's
// namespace deleted first.
func TestCloseInFlight(t *testing.T) {
	for _, deleteFirst := range []bool{false, true} {
		name := "close"
		if deleteFirst {
			name = "namespace deleted, then close"
		}
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			newUpstream(t, w.out, up1, never)
			before := runtime.NumGoroutine()
			s, err := resolver.Start(w.sb, resolver.Config{Names: testNames(), Upstreams: upstreams(up1), Forward: true, Timeout: 10 * time.Second})
			require.NoError(t, err)

			var tcpConns []net.Conn
			for i := range 20 {
				raw, _ := question("slow.example.", dns.TypeA).Pack()
				if i%4 == 0 {
					c := dialIn(t, w.sb, "tcp", resolverAddr)
					_, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(raw))), raw...))
					require.NoError(t, err)
					tcpConns = append(tcpConns, c)
				} else {
					c := dialIn(t, w.sb, "udp", resolverAddr)
					_, err := c.Write(raw)
					require.NoError(t, err)
				}
			}
			tcpConns = append(tcpConns, dialIn(t, w.sb, "tcp", resolverAddr)) // idle
			time.Sleep(200 * time.Millisecond)
			require.GreaterOrEqual(t, serverGoroutines(), 2+20)

			if deleteFirst {
				require.NoError(t, w.sb.Delete())
				// Queries still reach the server; forwarding them fails.
			}
			begin := time.Now()
			require.NoError(t, s.Close())
			assert.Less(t, time.Since(begin), time.Second)
			require.NoError(t, s.Close())
			for _, c := range tcpConns {
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				_, err := c.Read(make([]byte, 1))
				assert.Error(t, err)
				assert.NotErrorIs(t, err, os.ErrDeadlineExceeded, "connection left open")
			}
			// Close waited for every goroutine's wg.Done; one may still be
			// returning from its function when Close does.
			assert.Eventually(t, func() bool { return serverGoroutines() == 0 }, time.Second, time.Millisecond)
			waitGoroutines(t, before)
		})
	}
}
