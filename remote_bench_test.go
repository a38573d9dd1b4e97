package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/plugintest"
)

// startBridgePlugin serves cnm's own bridge driver and IPAM through the
// plugin protocol (plugin/server) as <name>.sock in the socket dir.
func startBridgePlugin(tb testing.TB, dirs pluginDirs, name string, host *cnmtest.HostNS) *plugintest.BridgePlugin {
	tb.Helper()
	p, err := plugintest.StartBridge(context.Background(), filepath.Join(dirs.sockets, name+".sock"), host.NS)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// TestRemoteCnmBridgeRoundTrip drives cnm's bridge driver and IPAM served
// as a plugin (plugin/server) through cnm's plugin client (drivers/remote,
// ipam/remote): both directions of the protocol, end to end.
func TestRemoteCnmBridgeRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	startBridgePlugin(t, dirs, "cnmbridge", host)
	ctrl := newPluginController(t, host, dirs.option())

	nw, err := ctrl.NewNetwork(ctx, "cnmbridge", "rt", cnm.WithIPAMDriver("cnmbridge", nil),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-rt"}))
	require.NoError(t, err)
	v4, _ := nw.IPv4()
	assert.Equal(t, netip.MustParsePrefix("10.150.0.0/24"), v4.Subnet, "from the served IPAM's default pools")
	_, err = host.NS.LinkByName(ctx, "br-rt")
	require.NoError(t, err, "the served bridge driver made its bridge")

	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	assert.Equal(t, "10.150.0.2/24", epA.Info().IPv4.String())
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv4, 8080), tcpTimeout))

	// A driver option the bridge driver does not know comes back as its
	// error, through the protocol, naming the plugin and the key.
	_, err = ctrl.NewNetwork(ctx, "cnmbridge", "bad", cnm.WithDriverOptions(map[string]string{"nosuch": "1"}))
	require.Error(t, err)
	assert.ErrorContains(t, err, `plugin "cnmbridge": NetworkDriver.CreateNetwork: plugin error:`)
	assert.ErrorContains(t, err, `"nosuch"`)

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// BenchmarkRemoteSetup measures one container's setup (NewSandbox +
// CreateEndpoint + Join) on a network of cnm's built-in bridge driver, of the
// same bridge driver served through the plugin protocol (plugin/server, on a
// unix socket), and of the SDK veth plugin, in one run. Teardown, and the
// wait for its background work (Settle), run outside the timer. Besides the mean (ns/op) it reports the median
// (median-ms); run with -benchtime 200x -count 5.
func BenchmarkRemoteSetup(b *testing.B) {
	for _, kind := range []string{"builtin-bridge", "remote-bridge", "remote-sdk-veth"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			dirs := newPluginDirs(b)
			host := cnmtest.NewHostNS(b)
			driver := "bridge"
			switch kind {
			case "remote-bridge":
				startBridgePlugin(b, dirs, "cnmbridge", host)
				driver = "cnmbridge"
			case "remote-sdk-veth":
				p, err := plugintest.StartVeth(filepath.Join(dirs.sockets, "vethp.sock"), host.Path)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { p.Close() })
				driver = "vethp"
			}
			ctrl := newPluginController(b, host, dirs.option())
			nw, err := ctrl.NewNetwork(ctx, driver, "bench", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.129.0.0/16")}))
			if err != nil {
				b.Fatal(err)
			}
			times := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				sb := setupContainer(b, ctrl, nw, fmt.Sprintf("c%d", i))
				times = append(times, time.Since(start))
				b.StopTimer()
				// The background removal of the last container (for a plugin:
				// moving its interface back, the plugin's Leave) is finished
				// before the next setup, so setups do not pay for teardowns.
				if err := sb.Delete(ctx); err != nil {
					b.Fatal(err)
				}
				if err := ctrl.Settle(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2])/1e6, "median-ms")
			if err := ctrl.Settle(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}
