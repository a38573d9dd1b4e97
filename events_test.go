package cnm_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
)

// next reads one event, failing the test after a second.
func next(t *testing.T, ch <-chan cnm.Event) cnm.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		require.True(t, ok, "events channel closed")
		return e
	case <-time.After(time.Second):
		t.Fatal("no event")
		return cnm.Event{}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEvents: a scripted sequence of operations gives its events in order,
// with the IDs of the objects; the logger given with WithLogger gets a
// debug line for each, and a failed operation too.
func TestEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctrl, host := cnmtest.NewController(t, cnm.WithLogger(logger))
	evs := ctrl.Events(ctx)

	nw, err := ctrl.NewNetwork(ctx, "bridge", "ev", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.140.0.0/24")}))
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "c1")
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "e1")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	require.NoError(t, ep.Leave(ctx, sb))
	require.NoError(t, ep.Join(ctx, sb))
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	_, err = ctrl.NewNetwork(ctx, "no-such-driver", "x")
	require.Error(t, err)

	n, e, s := nw.ID(), ep.ID(), sb.ID()
	for _, want := range []cnm.Event{
		{Type: cnm.EventNetworkCreated, NetworkID: n},
		{Type: cnm.EventSandboxCreated, SandboxID: s},
		{Type: cnm.EventEndpointCreated, NetworkID: n, EndpointID: e},
		{Type: cnm.EventJoined, NetworkID: n, EndpointID: e, SandboxID: s},
		{Type: cnm.EventLeft, NetworkID: n, EndpointID: e, SandboxID: s},
		{Type: cnm.EventJoined, NetworkID: n, EndpointID: e, SandboxID: s},
		{Type: cnm.EventLeft, NetworkID: n, EndpointID: e, SandboxID: s},
		{Type: cnm.EventEndpointDeleted, NetworkID: n, EndpointID: e},
		{Type: cnm.EventSandboxDeleted, SandboxID: s},
		{Type: cnm.EventNetworkDeleted, NetworkID: n},
	} {
		got := next(t, evs)
		assert.Equal(t, want.Type, got.Type)
		assert.Equal(t, [3]string{want.NetworkID, want.EndpointID, want.SandboxID}, [3]string{got.NetworkID, got.EndpointID, got.SandboxID}, "%s", got.Type)
		assert.False(t, got.Time.IsZero())
	}
	out := logs.String()
	for _, want := range []string{
		"cnm: joined", "network=" + n, "endpoint=" + e, "sandbox=" + s,
		"cnm: create network failed", "no-such-driver",
	} {
		assert.Contains(t, out, want)
	}
	cnmtest.AssertNoLeaks(t, host)
}

// TestEventsSlowReader: a reader that never reads blocks no operation;
// when it reads, it gets the first EventBuffer (+1) events, then one
// EventMissed with the count of the lost ones, then what came after.
func TestEventsSlowReader(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	rctx, cancel := context.WithCancel(ctx)
	evs := ctrl.Events(rctx)
	other := ctrl.Events(ctx) // read at once, all along: misses nothing
	var (
		mu  sync.Mutex
		got []cnm.Event
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range other {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		}
	}()

	nw, err := ctrl.NewNetwork(ctx, "null", "slow")
	require.NoError(t, err)
	const rounds = 200 // 400 events and the network's: more than EventBuffer
	for i := range rounds {
		ep, err := nw.CreateEndpoint(ctx, fmt.Sprintf("e%d", i))
		require.NoError(t, err)
		require.NoError(t, ep.Delete(ctx))
	}
	total := 1 + 2*rounds
	// The queue holds EventBuffer events; one more is already on its way.
	for i := range cnm.EventBuffer + 1 {
		e := next(t, evs)
		require.NotEqual(t, cnm.EventMissed, e.Type, "event %d", i)
	}
	missed := next(t, evs)
	require.Equal(t, cnm.EventMissed, missed.Type)
	require.Equal(t, total-cnm.EventBuffer-1, missed.Missed)
	require.NoError(t, nw.Delete(ctx))
	e := next(t, evs)
	require.Equal(t, cnm.EventNetworkDeleted, e.Type, "events after the loss come after the missed marker")

	cancel()
	for range evs { // closed once ctx is done
	}
	// The reader that reads all along gets every event (Close would drop
	// those it has not taken yet).
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= total+1
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, ctrl.Close())
	<-done // Close ends every reader
	require.Len(t, got, total+1)
	for _, e := range got {
		require.NotEqual(t, cnm.EventMissed, e.Type)
	}
	assert.True(t, strings.HasPrefix(string(got[1].Type), "endpoint-"))
	_, ok := <-ctrl.Events(ctx)
	require.False(t, ok, "a closed controller's events channel is closed")
	cnmtest.AssertNoLeaks(t, host)
}
