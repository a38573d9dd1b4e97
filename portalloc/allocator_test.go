package portalloc_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/portalloc"
)

// newAllocator returns an allocator without a bind test.
func newAllocator(t testing.TB, eph portalloc.Range) *portalloc.Allocator {
	t.Helper()
	return newBindAllocator(t, nil, eph)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestSentinel(t *testing.T) {
	assert.ErrorIs(t, portalloc.ErrNoPorts, errdefs.ErrInUse)
	assert.NotErrorIs(t, portalloc.ErrNoPorts, errdefs.ErrInvalid)
	assert.NotErrorIs(t, errdefs.ErrInUse, portalloc.ErrNoPorts)
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		eph     portalloc.Range
		wantErr string
	}{
		{"zero is the default", portalloc.Range{}, ""},
		{"one port", portalloc.Range{First: 5, Last: 5}, ""},
		{"whole space", portalloc.Range{First: 1, Last: 65535}, ""},
		{"first 0", portalloc.Range{First: 0, Last: 10}, "invalid argument: ephemeral range 0-10: want 1 <= first <= last"},
		{"last below first", portalloc.Range{First: 20, Last: 10}, "invalid argument: ephemeral range 20-10: want 1 <= first <= last"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := portalloc.New(portalloc.Config{Ephemeral: tc.eph})
			if tc.wantErr != "" {
				require.ErrorIs(t, err, errdefs.ErrInvalid)
				assert.EqualError(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, a)
		})
	}
	// The default range is Docker's.
	assert.Equal(t, portalloc.Range{First: 49153, Last: 65535}, portalloc.DefaultEphemeral)
	a := newAllocator(t, portalloc.Range{})
	p, err := a.Allocate(t.Context(), portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0")})
	require.NoError(t, err)
	assert.Equal(t, uint16(49153), p)
}

func TestAllocateInvalid(t *testing.T) {
	any4 := addr("0.0.0.0")
	for _, tc := range []struct {
		name string
		req  portalloc.Request
		want string
	}{
		{"unknown protocol", portalloc.Request{Proto: "icmp", HostIP: any4, Port: 80}, `invalid argument: protocol "icmp": want tcp, udp or sctp`},
		{"protocol in capitals", portalloc.Request{Proto: "TCP", HostIP: any4, Port: 80}, `invalid argument: protocol "TCP": want tcp, udp or sctp`},
		{"no protocol", portalloc.Request{HostIP: any4, Port: 80}, `invalid argument: protocol "": want tcp, udp or sctp`},
		{"no host address", portalloc.Request{Proto: "tcp", Port: 80}, "invalid argument: tcp host address missing: want an address of the host, or 0.0.0.0 or :: for every address"},
		{"zoned host address", portalloc.Request{Proto: "udp", HostIP: addr("fe80::1%eth0"), Port: 80}, "invalid argument: udp host address fe80::1%eth0: has a zone; give the address without one"},
		{"IPv4-mapped host address", portalloc.Request{Proto: "tcp", HostIP: addr("::ffff:10.0.0.1"), Port: 80}, "invalid argument: tcp host address ::ffff:10.0.0.1: an IPv4-mapped address; give the IPv4 address"},
		{"range end below start", portalloc.Request{Proto: "tcp", HostIP: any4, Port: 8081, PortEnd: 8080}, "invalid argument: tcp 0.0.0.0 range 8081-8080: ends below its start"},
		{"range end below start IPv6", portalloc.Request{Proto: "sctp", HostIP: addr("::"), Port: 9, PortEnd: 8}, "invalid argument: sctp [::] range 9-8: ends below its start"},
		{"range without a start", portalloc.Request{Proto: "tcp", HostIP: any4, PortEnd: 8080}, "invalid argument: tcp 0.0.0.0 range 0-8080: a range needs a first port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAllocator(t, portalloc.Range{})
			_, err := a.Allocate(t.Context(), tc.req)
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			assert.EqualError(t, err, tc.want)
		})
	}
}

func TestReserveInvalid(t *testing.T) {
	a := newAllocator(t, portalloc.Range{})
	for _, tc := range []struct {
		proto string
		ip    netip.Addr
		port  uint16
		want  string
	}{
		{"icmp", addr("0.0.0.0"), 80, `invalid argument: protocol "icmp": want tcp, udp or sctp`},
		{"tcp", netip.Addr{}, 80, "invalid argument: tcp host address missing: want an address of the host, or 0.0.0.0 or :: for every address"},
		{"tcp", addr("fe80::1%lo"), 80, "invalid argument: tcp host address fe80::1%lo: has a zone; give the address without one"},
		{"tcp", addr("0.0.0.0"), 0, "invalid argument: tcp 0.0.0.0:0: reserve needs a port"},
	} {
		err := a.Reserve(tc.proto, tc.ip, tc.port)
		require.ErrorIs(t, err, errdefs.ErrInvalid)
		assert.EqualError(t, err, tc.want)
	}
}

// TestConflicts checks the conflict rule of the package doc, through both
// Allocate and Reserve: the same port on the same address, and the
// unspecified address against every address of its family, both ways.
func TestConflicts(t *testing.T) {
	type bnd struct {
		proto, ip string
		port      uint16
	}
	for _, tc := range []struct {
		name string
		held bnd
		req  bnd
		want string // "" : no conflict
	}{
		{"same port and address", bnd{"tcp", "0.0.0.0", 8080}, bnd{"tcp", "0.0.0.0", 8080}, "tcp 0.0.0.0:8080: in use by another mapping"},
		{"same specific address", bnd{"udp", "10.0.0.1", 53}, bnd{"udp", "10.0.0.1", 53}, "udp 10.0.0.1:53: in use by another mapping"},
		{"wildcard held, specific asked", bnd{"tcp", "0.0.0.0", 8080}, bnd{"tcp", "10.0.0.1", 8080}, "tcp 10.0.0.1:8080: in use by another mapping"},
		{"specific held, wildcard asked", bnd{"tcp", "10.0.0.1", 8080}, bnd{"tcp", "0.0.0.0", 8080}, "tcp 0.0.0.0:8080: in use by another mapping"},
		{"loopback held, wildcard asked", bnd{"tcp", "127.0.0.1", 8080}, bnd{"tcp", "0.0.0.0", 8080}, "tcp 0.0.0.0:8080: in use by another mapping"},
		{"IPv6 wildcard held, specific asked", bnd{"tcp", "::", 8080}, bnd{"tcp", "fd00::1", 8080}, "tcp [fd00::1]:8080: in use by another mapping"},
		{"IPv6 specific held, wildcard asked", bnd{"sctp", "::1", 8080}, bnd{"sctp", "::", 8080}, "sctp [::]:8080: in use by another mapping"},
		{"two specific addresses", bnd{"tcp", "10.0.0.1", 8080}, bnd{"tcp", "10.0.0.2", 8080}, ""},
		{"another port", bnd{"tcp", "0.0.0.0", 8080}, bnd{"tcp", "0.0.0.0", 8081}, ""},
		{"tcp and udp", bnd{"tcp", "0.0.0.0", 8080}, bnd{"udp", "0.0.0.0", 8080}, ""},
		{"udp and sctp", bnd{"udp", "0.0.0.0", 8080}, bnd{"sctp", "0.0.0.0", 8080}, ""},
		{"IPv4 and IPv6 wildcards", bnd{"tcp", "0.0.0.0", 8080}, bnd{"tcp", "::", 8080}, ""},
		{"IPv6 wildcard and IPv4 address", bnd{"tcp", "::", 8080}, bnd{"tcp", "10.0.0.1", 8080}, ""},
		{"IPv4 wildcard and IPv6 address", bnd{"tcp", "0.0.0.0", 8080}, bnd{"tcp", "fd00::1", 8080}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, via := range []string{"Allocate", "Reserve"} {
				a := newAllocator(t, portalloc.Range{})
				require.NoError(t, a.Reserve(tc.held.proto, addr(tc.held.ip), tc.held.port))
				var err error
				if via == "Allocate" {
					var got uint16
					got, err = a.Allocate(t.Context(), portalloc.Request{Proto: tc.req.proto, HostIP: addr(tc.req.ip), Port: tc.req.port})
					if err == nil {
						assert.Equal(t, tc.req.port, got)
					}
				} else {
					err = a.Reserve(tc.req.proto, addr(tc.req.ip), tc.req.port)
				}
				if tc.want == "" {
					assert.NoError(t, err, via)
					continue
				}
				assert.ErrorIs(t, err, errdefs.ErrInUse, via)
				assert.NotErrorIs(t, err, portalloc.ErrNoPorts, via)
				assert.EqualError(t, err, tc.want, via)

				// Released, the port is free again.
				a.Release(tc.held.proto, addr(tc.held.ip), tc.held.port)
				assert.NoError(t, a.Reserve(tc.req.proto, addr(tc.req.ip), tc.req.port), via)
			}
		})
	}
}

func TestRange(t *testing.T) {
	ctx := t.Context()
	a := newAllocator(t, portalloc.Range{})
	req := func(ip string, port, end uint16) portalloc.Request {
		return portalloc.Request{Proto: "tcp", HostIP: addr(ip), Port: port, PortEnd: end}
	}
	// The first free port of the range, each time.
	for _, want := range []uint16{8080, 8081, 8082} {
		got, err := a.Allocate(ctx, req("0.0.0.0", 8080, 8082))
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
	_, err := a.Allocate(ctx, req("0.0.0.0", 8080, 8082))
	require.ErrorIs(t, err, portalloc.ErrNoPorts)
	require.ErrorIs(t, err, errdefs.ErrInUse)
	assert.EqualError(t, err, "tcp 0.0.0.0 range 8080-8082: every port is taken")

	// A specific address is refused where the wildcard holds the port.
	_, err = a.Allocate(ctx, req("10.0.0.1", 8081, 8082))
	assert.EqualError(t, err, "tcp 10.0.0.1 range 8081-8082: every port is taken")

	// A port released in the middle is the first free one again.
	a.Release("tcp", addr("0.0.0.0"), 8081)
	got, err := a.Allocate(ctx, req("10.0.0.1", 8080, 8082))
	require.NoError(t, err)
	assert.Equal(t, uint16(8081), got)

	// Specific addresses share a port; the wildcard then skips it.
	b := newAllocator(t, portalloc.Range{})
	require.NoError(t, b.Reserve("udp", addr("10.0.0.1"), 53))
	got, err = b.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: addr("10.0.0.2"), Port: 53, PortEnd: 54})
	require.NoError(t, err)
	assert.Equal(t, uint16(53), got)
	got, err = b.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: addr("0.0.0.0"), Port: 53, PortEnd: 54})
	require.NoError(t, err)
	assert.Equal(t, uint16(54), got)

	// A range of one port is that port.
	_, err = b.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: addr("0.0.0.0"), Port: 54, PortEnd: 54})
	assert.EqualError(t, err, "udp 0.0.0.0:54: in use by another mapping")

	// The range may end at 65535.
	c := newAllocator(t, portalloc.Range{})
	for _, want := range []uint16{65534, 65535} {
		got, err := c.Allocate(ctx, req("::", 65534, 65535))
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
	_, err = c.Allocate(ctx, req("::", 65534, 65535))
	assert.EqualError(t, err, "tcp [::] range 65534-65535: every port is taken")
}

// TestEphemeralThousand takes every port of a range of 1,000: all
// distinct, all in the range; the next request finds the range exhausted,
// and a released port is available again.
func TestEphemeralThousand(t *testing.T) {
	ctx := t.Context()
	eph := portalloc.Range{First: 20000, Last: 20999}
	a := newAllocator(t, eph)
	req := portalloc.Request{Proto: "udp", HostIP: addr("0.0.0.0")}
	seen := map[uint16]bool{}
	for range 1000 {
		p, err := a.Allocate(ctx, req)
		require.NoError(t, err)
		require.False(t, seen[p], "port %d handed out twice", p)
		require.True(t, p >= eph.First && p <= eph.Last, "port %d outside %v", p, eph)
		seen[p] = true
	}
	_, err := a.Allocate(ctx, req)
	require.ErrorIs(t, err, portalloc.ErrNoPorts)
	require.ErrorIs(t, err, errdefs.ErrInUse)
	assert.EqualError(t, err, "udp 0.0.0.0 ephemeral range 20000-20999: every port is taken")

	// A specific address of the family finds no port either; another
	// protocol or family does.
	_, err = a.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: addr("10.0.0.1")})
	assert.ErrorIs(t, err, portalloc.ErrNoPorts)
	_, err = a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0")})
	assert.NoError(t, err)
	_, err = a.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: addr("::")})
	assert.NoError(t, err)

	for _, p := range []uint16{20500, 20001, 20999} {
		a.Release("udp", addr("0.0.0.0"), p)
		got, err := a.Allocate(ctx, req)
		require.NoError(t, err)
		assert.Equal(t, p, got)
	}
	_, err = a.Allocate(ctx, req)
	assert.ErrorIs(t, err, portalloc.ErrNoPorts)
}

// TestEphemeralNextFit checks the spread: a port just released is not
// handed out again while another is free, and the search wraps.
func TestEphemeralNextFit(t *testing.T) {
	ctx := t.Context()
	a := newAllocator(t, portalloc.Range{First: 100, Last: 104})
	tcp4 := portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0")}
	var got []uint16
	for range 7 {
		p, err := a.Allocate(ctx, tcp4)
		require.NoError(t, err)
		got = append(got, p)
		a.Release("tcp", addr("0.0.0.0"), p)
	}
	assert.Equal(t, []uint16{100, 101, 102, 103, 104, 100, 101}, got)

	// Held ports are skipped; the search goes on after the last handed out.
	require.NoError(t, a.Reserve("tcp", addr("10.0.0.1"), 102)) // conflicts with the wildcard
	require.NoError(t, a.Reserve("tcp", addr("0.0.0.0"), 103))
	p, err := a.Allocate(ctx, tcp4)
	require.NoError(t, err)
	assert.Equal(t, uint16(104), p)
	p, err = a.Allocate(ctx, tcp4)
	require.NoError(t, err)
	assert.Equal(t, uint16(100), p)

	// Each protocol and family has its own cursor.
	for _, r := range []portalloc.Request{
		{Proto: "udp", HostIP: addr("0.0.0.0")},
		{Proto: "tcp", HostIP: addr("::")},
	} {
		p, err := a.Allocate(ctx, r)
		require.NoError(t, err)
		assert.Equal(t, uint16(100), p, r)
	}

	// Explicit ports do not move the cursor.
	_, err = a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0"), Port: 101})
	require.NoError(t, err)
	_, err = a.Allocate(ctx, tcp4)
	assert.ErrorIs(t, err, portalloc.ErrNoPorts) // 100, 101, 103, 104 held, 102 conflicts
}

// TestEphemeralTop checks wrapping at 65535, where port+1 overflows.
func TestEphemeralTop(t *testing.T) {
	ctx := t.Context()
	a := newAllocator(t, portalloc.Range{First: 65534, Last: 65535})
	r := portalloc.Request{Proto: "sctp", HostIP: addr("::1")}
	for _, want := range []uint16{65534, 65535} {
		p, err := a.Allocate(ctx, r)
		require.NoError(t, err)
		assert.Equal(t, want, p)
	}
	_, err := a.Allocate(ctx, r)
	assert.EqualError(t, err, "sctp [::1] ephemeral range 65534-65535: every port is taken")
	a.Release("sctp", addr("::1"), 65535)
	a.Release("sctp", addr("::1"), 65534)
	p, err := a.Allocate(ctx, r)
	require.NoError(t, err)
	assert.Equal(t, uint16(65534), p)
}

func TestRelease(t *testing.T) {
	ctx := t.Context()
	a := newAllocator(t, portalloc.Range{})
	require.NoError(t, a.Reserve("tcp", addr("10.0.0.1"), 80))
	require.NoError(t, a.Reserve("tcp", addr("10.0.0.2"), 80))

	// Releasing what is not held, or with bad arguments, does nothing.
	a.Release("tcp", addr("0.0.0.0"), 80)
	a.Release("tcp", addr("10.0.0.1"), 81)
	a.Release("udp", addr("10.0.0.1"), 80)
	a.Release("icmp", addr("10.0.0.1"), 80)
	a.Release("tcp", netip.Addr{}, 80)
	_, err := a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("10.0.0.1"), Port: 80})
	assert.ErrorIs(t, err, errdefs.ErrInUse)

	// The wildcard waits for both specific addresses to go.
	a.Release("tcp", addr("10.0.0.1"), 80)
	a.Release("tcp", addr("10.0.0.1"), 80) // twice
	_, err = a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0"), Port: 80})
	assert.EqualError(t, err, "tcp 0.0.0.0:80: in use by another mapping")
	a.Release("tcp", addr("10.0.0.2"), 80)
	p, err := a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0"), Port: 80})
	require.NoError(t, err)
	assert.Equal(t, uint16(80), p)
}

func TestAllocateCanceled(t *testing.T) {
	a := newAllocator(t, portalloc.Range{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, r := range []portalloc.Request{
		{Proto: "tcp", HostIP: addr("0.0.0.0"), Port: 80},
		{Proto: "tcp", HostIP: addr("0.0.0.0")},
	} {
		_, err := a.Allocate(ctx, r)
		require.ErrorIs(t, err, context.Canceled)
	}
	// Nothing is held.
	require.NoError(t, a.Reserve("tcp", addr("0.0.0.0"), 80))
}

// TestConcurrent runs allocations from many goroutines (meant for -race):
// no port is handed out twice, and of racing wildcard and specific
// requests for one port only a compatible set wins.
func TestConcurrent(t *testing.T) {
	ctx := t.Context()
	const workers, each = 16, 100
	a := newAllocator(t, portalloc.Range{First: 30000, Last: 30000 + workers*each - 1})

	var mu sync.Mutex
	seen := map[uint16]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var mine []uint16
			for i := range each {
				p, err := a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("0.0.0.0")})
				if !assert.NoError(t, err) {
					return
				}
				mine = append(mine, p)
				if i%4 == w%4 { // churn: release and retake
					a.Release("tcp", addr("0.0.0.0"), p)
					p, err = a.Allocate(ctx, portalloc.Request{Proto: "tcp", HostIP: addr("10.0.0.1"), Port: 30000, PortEnd: 30000 + workers*each - 1})
					if !assert.NoError(t, err) {
						return
					}
					mine[len(mine)-1] = p
				}
			}
			mu.Lock()
			for _, p := range mine {
				seen[p]++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	assert.Len(t, seen, workers*each)
	for p, n := range seen {
		assert.Equal(t, 1, n, "port %d handed out %d times", p, n)
	}

	// One port, asked for on the wildcard and on specific addresses at once.
	for round := range 20 {
		b := newAllocator(t, portalloc.Range{})
		var wins [2]int // wildcard, specific
		var wmu sync.Mutex
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				ip, kind := addr("0.0.0.0"), 0
				if i%2 == 1 {
					ip, kind = addr(fmt.Sprintf("10.0.0.%d", i)), 1
				}
				if _, err := b.Allocate(ctx, portalloc.Request{Proto: "udp", HostIP: ip, Port: 5000}); err == nil {
					wmu.Lock()
					wins[kind]++
					wmu.Unlock()
				} else {
					assert.ErrorIs(t, err, errdefs.ErrInUse)
				}
			})
		}
		wg.Wait()
		if wins[0] == 1 {
			assert.Zero(t, wins[1], "round %d: the wildcard and a specific address both won", round)
		} else {
			assert.Zero(t, wins[0], "round %d", round)
			assert.Equal(t, 4, wins[1], "round %d: every specific address wins when the wildcard does not", round)
		}
	}
}
