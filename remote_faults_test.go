package cnm_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/plugintest"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// TestRemotePluginFaults breaks one call of the SDK veth plugin on the wire
// per case. Each gives an error naming the plugin and the call, within the
// plugin timeout, and leaves nothing of the failed operation: no network,
// endpoint, address, interface or link. The same operation then succeeds.
func TestRemotePluginFaults(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	for _, tc := range []struct {
		name  string
		path  string // the call broken
		fault plugintest.Fault
		is    []error
		text  string
	}{
		{"malformed JSON", protocol.PathCreateNetwork, plugintest.MalformedJSON, []error{plugin.ErrProtocol}, "malformed JSON answer"},
		{"HTTP error", protocol.PathCreateEndpoint, plugintest.HTTPError, []error{plugin.ErrProtocol}, "HTTP 500 Internal Server Error"},
		{"Err field", protocol.PathJoin, plugintest.ErrField, []error{plugin.ErrPlugin}, "plugin error: " + plugintest.FaultText},
		{"unknown interface on Join", protocol.PathJoin, plugintest.UnknownInterface, []error{cnm.ErrNotFound},
			`InterfaceName.SrcName "` + plugintest.UnknownInterfaceName + `": no such interface in the host namespace`},
		{"huge response", protocol.PathJoin, plugintest.Huge, []error{plugin.ErrProtocol}, "answer larger than 1048576 bytes"},
		{"hanging plugin", protocol.PathJoin, plugintest.Hang, []error{plugin.ErrUnavailable, context.DeadlineExceeded}, "no answer within 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dirs := newPluginDirs(t)
			host := cnmtest.NewHostNS(t)
			p, err := plugintest.StartVeth(filepath.Join(t.TempDir(), "backend.sock"), host.Path)
			require.NoError(t, err)
			t.Cleanup(func() { p.Close() })
			front, err := plugintest.StartFront(filepath.Join(dirs.sockets, "faulty.sock"), p.Socket)
			require.NoError(t, err)
			t.Cleanup(func() { front.Close() })
			ctrl := newPluginController(t, host, dirs.option(), cnm.WithPluginTimeout(timeout))
			sb, err := ctrl.NewSandbox(ctx, "c1")
			require.NoError(t, err)
			t.Cleanup(func() { sb.Delete(ctx) })
			subnet := cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.80.0.0/24")})

			// took is how long the failing call took: it must fail within
			// the plugin timeout (plus slack), whatever the checks around
			// it cost on a loaded machine.
			var took time.Duration
			callStart := time.Now()
			check := func(err error) {
				t.Helper()
				took = time.Since(callStart)
				require.Error(t, err)
				for _, want := range tc.is {
					require.ErrorIs(t, err, want)
				}
				assert.ErrorContains(t, err, `plugin "faulty": `+tc.path[1:]+": ")
				assert.ErrorContains(t, err, tc.text)
			}
			front.Set(tc.path, tc.fault)
			var (
				nw *cnm.Network
				ep *cnm.Endpoint
			)
			switch tc.path {
			case protocol.PathCreateNetwork:
				callStart = time.Now()
				_, err = ctrl.NewNetwork(ctx, "faulty", "pnet", subnet)
				check(err)
				assert.Empty(t, ctrl.Networks())
				assertNoLinkLeaks(t, host)
				front.Set(tc.path, plugintest.Pass)
				nw, err = ctrl.NewNetwork(ctx, "faulty", "pnet", subnet) // the same subnet: it was released
				require.NoError(t, err)
			case protocol.PathCreateEndpoint:
				nw, err = ctrl.NewNetwork(ctx, "faulty", "pnet", subnet)
				require.NoError(t, err)
				callStart = time.Now()
				_, err = nw.CreateEndpoint(ctx, "c1")
				check(err)
				assert.Empty(t, nw.Endpoints())
				front.Set(tc.path, plugintest.Pass)
			case protocol.PathJoin:
				nw, err = ctrl.NewNetwork(ctx, "faulty", "pnet", subnet)
				require.NoError(t, err)
				ep, err = nw.CreateEndpoint(ctx, "c1")
				require.NoError(t, err)
				callStart = time.Now()
				check(ep.Join(ctx, sb))
				assert.Empty(t, ep.Info().SandboxID)
				assert.Empty(t, sb.Endpoints())
				assert.Equal(t, []string{"lo"}, sandboxLinks(t, sb))
				br, _ := p.Bridge(nw.ID())
				require.NoError(t, ctrl.Settle(ctx))
				assertNoLinkLeaks(t, host, br)
				front.Set(tc.path, plugintest.Pass)
			}
			assert.Less(t, took, timeout+time.Second, "the error came within the timeout")

			// Nothing of the failure stays in the way: the operation works.
			if ep == nil {
				// The failed attempt's address was released.
				ep, err = nw.CreateEndpoint(ctx, "c1", cnm.WithIPv4Address(netip.MustParseAddr("10.80.0.2")))
				require.NoError(t, err)
			}
			require.NoError(t, ep.Join(ctx, sb))
			assert.Equal(t, []string{"lo", "eth0"}, sandboxLinks(t, sb))

			require.NoError(t, sb.Delete(ctx))
			require.NoError(t, ctrl.Settle(ctx))
			require.NoError(t, nw.Delete(ctx))
			cnmtest.AssertNoLeaks(t, host)
		})
	}
}

// assertNoLinkLeaks checks that host has no link but lo and keep, and no
// rules of a controller (while sandboxes may exist).
func assertNoLinkLeaks(t *testing.T, host *cnmtest.HostNS, keep ...string) {
	t.Helper()
	for _, l := range cnmtest.Leaks(host, keep...) {
		if !strings.HasPrefix(l, "file ") && !strings.HasPrefix(l, "mount ") {
			t.Errorf("leak: %s", l)
		}
	}
}
