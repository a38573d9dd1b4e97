package plugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// serve serves h on a unix socket in a temp dir and returns a client for it.
func serve(t testing.TB, h http.Handler, cfg plugin.Config) *plugin.Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.sock")
	l := listenUnix(t, path)
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	if cfg.Name == "" {
		cfg.Name = "fake"
	}
	cfg.Locate = plugin.Fixed(plugin.Spec{Name: cfg.Name, Network: "unix", Address: path})
	c, err := plugin.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func TestClientCall(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc(protocol.PathActivate, func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, http.MethodPost, r.Method)
		assert.Equal(t, protocol.ContentType, r.Header.Get("Accept"))
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
		io.WriteString(w, `{"Implements": ["NetworkDriver"]}`)
	})
	mux.HandleFunc(protocol.PathCreateNetwork, func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, protocol.ContentType, r.Header.Get("Content-Type"))
		var req protocol.CreateNetworkRequest
		assert.NoError(t, json.NewDecoder(r.Body).Decode(&req))
		assert.Equal(t, "n1", req.NetworkID)
		assert.Equal(t, "10.0.0.0/24", req.IPv4Data[0].Pool)
		io.WriteString(w, `{}`)
	})
	mux.HandleFunc(protocol.PathLeave, func(w http.ResponseWriter, r *http.Request) {}) // empty body
	c := serve(t, mux, plugin.Config{})
	ctx := context.Background()

	impl, err := c.Activate(ctx, protocol.NetworkDriver)
	require.NoError(t, err)
	assert.Equal(t, []string{"NetworkDriver"}, impl)
	require.NoError(t, c.Call(ctx, protocol.PathCreateNetwork,
		protocol.CreateNetworkRequest{NetworkID: "n1", IPv4Data: []protocol.IPAMData{{Pool: "10.0.0.0/24"}}}, &protocol.ErrorResponse{}))
	require.NoError(t, c.Call(ctx, protocol.PathLeave, protocol.LeaveRequest{}, nil))

	_, err = c.Activate(ctx, protocol.IpamDriver)
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
	assert.ErrorContains(t, err, `plugin "fake": Plugin.Activate`)
	assert.ErrorContains(t, err, "implements [NetworkDriver], not IpamDriver")
}

// TestClientFaults: each broken answer gives an error naming the plugin and
// the call, with the right sentinel, within the timeout.
func TestClientFaults(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		is      []error
		text    string
	}{
		{"malformed JSON", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"Scope": "local"`) },
			[]error{plugin.ErrProtocol}, "malformed JSON"},
		{"wrong JSON type", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"Scope": 7}`) },
			[]error{plugin.ErrProtocol}, "malformed JSON"},
		{"HTTP error", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusBadGateway) },
			[]error{plugin.ErrProtocol}, "HTTP 502 Bad Gateway"},
		{"HTTP not found", http.NotFound,
			[]error{plugin.ErrProtocol, errdefs.ErrNotSupported}, "HTTP 404"},
		{"Err field with 500", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `{"Err": "the frobnicator is out of order"}`)
		}, []error{plugin.ErrPlugin}, "plugin error: the frobnicator is out of order"},
		{"Err field with 200", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"Scope": "local", "Err": "no scope for you"}`)
		}, []error{plugin.ErrPlugin}, "plugin error: no scope for you"},
		{"huge response", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"Scope": "`+strings.Repeat("x", 2<<20)+`"}`)
		}, []error{plugin.ErrProtocol}, "larger than 1048576 bytes"},
		{"hanging plugin", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			[]error{plugin.ErrUnavailable, context.DeadlineExceeded}, "no answer within 300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, tc.handler, plugin.Config{Name: "faulty", Timeout: timeout})
			start := time.Now()
			var resp protocol.CapabilitiesResponse
			err := c.Call(context.Background(), protocol.PathGetCapabilities, nil, &resp)
			assert.Less(t, time.Since(start), timeout+200*time.Millisecond)
			require.Error(t, err)
			for _, want := range tc.is {
				require.ErrorIs(t, err, want)
			}
			var ce *plugin.CallError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "faulty", ce.Plugin)
			assert.Equal(t, "NetworkDriver.GetCapabilities", ce.Call)
			assert.ErrorContains(t, err, `plugin "faulty": NetworkDriver.GetCapabilities: `)
			assert.ErrorContains(t, err, tc.text)
		})
	}
}

// TestClientRetries: a broken connection is retried for a call that
// changes nothing, never for one that changes something.
func TestClientRetries(t *testing.T) {
	var calls atomic.Int32
	// The first two requests of each kind get their connection cut.
	var caps, creates atomic.Int32
	cut := func(n *atomic.Int32) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if n.Add(1) <= 2 {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
			io.WriteString(w, `{"Scope": "local"}`)
		}
	}
	mux := http.NewServeMux()
	mux.Handle(protocol.PathGetCapabilities, cut(&caps))
	mux.Handle(protocol.PathCreateEndpoint, cut(&creates))
	c := serve(t, mux, plugin.Config{Name: "flaky"})
	ctx := context.Background()

	var resp protocol.CapabilitiesResponse
	require.NoError(t, c.Call(ctx, protocol.PathGetCapabilities, nil, &resp))
	assert.Equal(t, "local", resp.Scope)
	assert.EqualValues(t, 3, caps.Load())

	err := c.Call(ctx, protocol.PathCreateEndpoint, protocol.CreateEndpointRequest{}, nil)
	require.ErrorIs(t, err, plugin.ErrUnavailable)
	assert.ErrorContains(t, err, `plugin "flaky": NetworkDriver.CreateEndpoint`)
	assert.EqualValues(t, 1, creates.Load(), "a call that changes something is sent once")
}

func TestClientUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gone.sock")
	c, err := plugin.NewClient(plugin.Config{Name: "gone", Locate: plugin.Fixed(plugin.Spec{Network: "unix", Address: path})})
	require.NoError(t, err)
	_, err = c.Activate(context.Background(), "")
	require.ErrorIs(t, err, plugin.ErrUnavailable)
	assert.ErrorContains(t, err, `plugin "gone": Plugin.Activate`)
	assert.ErrorContains(t, err, path)

	// Found by discovery: the lookup's error is reported.
	d := plugin.Discovery{SocketDirs: []string{t.TempDir()}, SpecDirs: []string{}}
	c, err = plugin.NewClient(plugin.Config{Name: "gone", Locate: d.Locator("gone")})
	require.NoError(t, err)
	_, err = c.Activate(context.Background(), "")
	require.ErrorIs(t, err, plugin.ErrUnavailable)
	require.ErrorIs(t, err, errdefs.ErrNotFound)

	// The caller's own cancellation is reported as such.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.Activate(ctx, "")
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, errors.Is(err, context.DeadlineExceeded))
}

func TestNewClientInvalid(t *testing.T) {
	loc := plugin.Fixed(plugin.Spec{})
	for _, cfg := range []plugin.Config{
		{Name: "", Locate: loc},
		{Name: "a/b", Locate: loc},
		{Name: "p"},
		{Name: "p", Locate: loc, Timeout: -1},
		{Name: "p", Locate: loc, MaxResponse: -1},
	} {
		_, err := plugin.NewClient(cfg)
		require.ErrorIs(t, err, errdefs.ErrInvalid, "%+v", cfg)
	}
}
