package overlay

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/osl"
)

// BenchmarkConnect measures a TCP connect (and close) between two hosts'
// sandboxes over the overlay, and between the two hosts directly over the
// underlay, in one run:
//
//	go test -run '^$' -bench Connect ./drivers/overlay/
//
// (inside `unshare --net --mount`, as root).
func BenchmarkConnect(b *testing.B) {
	lab := newLab(b, 1500, testNet("eeeeeeeeeeeeeeee", 4097, "10.40.0.0/24"))
	ep1, ep2 := lab.pair(b, epSpec{"ep1", "10.40.0.2/24", "02:00:00:00:40:02"}, epSpec{"ep2", "10.40.0.3/24", "02:00:00:00:40:03"})
	serve(b, ep2.sb, 9000, "")
	serve(b, lab.h2.ns, 9001, "")
	b.Cleanup(func() { lab.finish(b, ep1, ep2) })

	for _, tc := range []struct {
		name string
		from *osl.Namespace
		to   string
	}{
		{"overlay", ep1.sb, "10.40.0.3:9000"},
		{"underlay", lab.h1.ns, "192.0.2.2:9001"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			to := netip.MustParseAddrPort(tc.to)
			// The first connect resolves neighbours: not measured.
			_, err := ask(tc.from, to, 3*time.Second)
			require.NoError(b, err)
			// The loop runs on a thread inside the namespace, so every
			// socket is made there.
			require.NoError(b, tc.from.Do(func() error {
				d := net.Dialer{Timeout: 3 * time.Second}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c, err := d.Dial("tcp", to.String())
					if err != nil {
						return fmt.Errorf("connect %d: %w", i, err)
					}
					// Reset, not FIN: no TIME_WAIT to run out of ports.
					_ = c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				b.StopTimer()
				return nil
			}))
		})
	}
}
