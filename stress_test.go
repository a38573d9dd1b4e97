//go:build linux

package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
)

// hardWatchdog arms a deadlock watchdog for one phase of a test: if stop is
// not called within d, it writes every goroutine's stack to stderr and
// crashes the test binary with a message naming the phase (a hung phase
// would otherwise hang the whole run until go test's own timeout).
func hardWatchdog(t testing.TB, phase string, d time.Duration) (stop func()) {
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 64<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "\n=== DEADLOCK WATCHDOG: %s: %s did not finish within %s. All goroutines:\n\n%s\n", t.Name(), phase, d, buf)
		panic(fmt.Sprintf("%s: %s did not finish within %s: deadlock or hang (all goroutines dumped above)", t.Name(), phase, d))
	})
	return func() { timer.Stop() }
}

// hardThreadsElsewhere returns a line for every OS thread of the process
// whose network namespace is not want (as read from /proc/self/ns/net).
func hardThreadsElsewhere(want string) []string {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return []string{"read /proc/self/task: " + err.Error()}
	}
	var out []string
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			out = append(out, fmt.Sprintf("thread %s: read its namespace: %v", task.Name(), err))
			continue
		}
		if ns != want {
			comm, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/comm")
			out = append(out, fmt.Sprintf("thread %s (%s) is in network namespace %s, not in %s where the process started",
				task.Name(), strings.TrimSpace(string(comm)), ns, want))
		}
	}
	return out
}

// hardExpectedErr reports whether err is an outcome that concurrent users of
// shared objects must expect.
func hardExpectedErr(err error) bool {
	return err == nil || errors.Is(err, cnm.ErrInUse) || errors.Is(err, cnm.ErrNotFound) ||
		errors.Is(err, cnm.ErrExists) || errors.Is(err, cnm.ErrClosed)
}

// hardStress is the shared world of TestRaceStress: a controller and every
// object the workers have seen, deleted ones included, so that operations
// also run on stale objects.
type hardStress struct {
	ctrl   *cnm.Controller
	closed atomic.Bool

	mu   sync.Mutex
	nets []*cnm.Network
	sbs  []*cnm.Sandbox
	eps  []*cnm.Endpoint
}

const (
	hardStressNets = 3 // network names sn0..sn2
	hardStressSbs  = 8 // container IDs c0..c7
	hardStressEps  = 6 // endpoint names e0..e5 per network
)

func hardRemember[T any](mu *sync.Mutex, list *[]T, v T) {
	mu.Lock()
	defer mu.Unlock()
	*list = append(*list, v)
	if len(*list) > 64 {
		*list = (*list)[len(*list)-64:]
	}
}

func hardPick[T any](r *rand.Rand, mu *sync.Mutex, list *[]T) (T, bool) {
	mu.Lock()
	defer mu.Unlock()
	var zero T
	if len(*list) == 0 {
		return zero, false
	}
	return (*list)[r.IntN(len(*list))], true
}

// network returns a network: mostly the current one of a random name, at
// times any seen before (maybe deleted).
func (w *hardStress) network(r *rand.Rand) *cnm.Network {
	if r.IntN(5) == 0 {
		if n, ok := hardPick(r, &w.mu, &w.nets); ok {
			return n
		}
	}
	n, err := w.ctrl.NetworkByName(fmt.Sprintf("sn%d", r.IntN(hardStressNets)))
	if err != nil {
		return nil
	}
	return n
}

func (w *hardStress) sandbox(r *rand.Rand) *cnm.Sandbox {
	if r.IntN(5) == 0 {
		if s, ok := hardPick(r, &w.mu, &w.sbs); ok {
			return s
		}
	}
	s, err := w.ctrl.SandboxByContainerID(fmt.Sprintf("c%d", r.IntN(hardStressSbs)))
	if err != nil {
		return nil
	}
	return s
}

func (w *hardStress) endpoint(r *rand.Rand) *cnm.Endpoint {
	if r.IntN(5) == 0 {
		if e, ok := hardPick(r, &w.mu, &w.eps); ok {
			return e
		}
	}
	n := w.network(r)
	if n == nil {
		return nil
	}
	e, err := n.EndpointByName(fmt.Sprintf("e%d", r.IntN(hardStressEps)))
	if err != nil {
		return nil
	}
	return e
}

// op runs one random operation and returns its description and error.
func (w *hardStress) op(ctx context.Context, r *rand.Rand) (string, error) {
	switch k := r.IntN(100); {
	case k < 5:
		i := r.IntN(hardStressNets)
		opts := []cnm.NetworkOption{cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.150.%d.0/24", i))})}
		if i == 0 {
			opts = append(opts, cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd15::/64")}))
		}
		n, err := w.ctrl.NewNetwork(ctx, "bridge", fmt.Sprintf("sn%d", i), opts...)
		if err == nil {
			hardRemember(&w.mu, &w.nets, n)
		}
		return fmt.Sprintf("NewNetwork sn%d", i), err
	case k < 9:
		n := w.network(r)
		if n == nil {
			return "", nil
		}
		return "Delete network " + n.Name(), n.Delete(ctx)
	case k < 19:
		name := fmt.Sprintf("c%d", r.IntN(hardStressSbs))
		s, err := w.ctrl.NewSandbox(ctx, name)
		if err == nil {
			hardRemember(&w.mu, &w.sbs, s)
		}
		return "NewSandbox " + name, err
	case k < 27:
		s := w.sandbox(r)
		if s == nil {
			return "", nil
		}
		return "Delete sandbox " + s.ContainerID(), s.Delete(ctx)
	case k < 42:
		n := w.network(r)
		if n == nil {
			return "", nil
		}
		name := fmt.Sprintf("e%d", r.IntN(hardStressEps))
		e, err := n.CreateEndpoint(ctx, name)
		if err == nil {
			hardRemember(&w.mu, &w.eps, e)
		}
		return fmt.Sprintf("CreateEndpoint %s on %s", name, n.Name()), err
	case k < 50:
		e := w.endpoint(r)
		if e == nil {
			return "", nil
		}
		return fmt.Sprintf("Delete endpoint %s of %s", e.Name(), e.Network().Name()), e.Delete(ctx)
	case k < 78:
		e, s := w.endpoint(r), w.sandbox(r)
		if e == nil || s == nil {
			return "", nil
		}
		return fmt.Sprintf("Join endpoint %s of %s to sandbox %s", e.Name(), e.Network().Name(), s.ContainerID()), e.Join(ctx, s)
	default:
		// Mostly an endpoint joined to the sandbox, at times any pair.
		s := w.sandbox(r)
		if s == nil {
			return "", nil
		}
		var e *cnm.Endpoint
		if eps := s.Endpoints(); len(eps) > 0 && r.IntN(4) > 0 {
			e = eps[r.IntN(len(eps))]
		} else if e = w.endpoint(r); e == nil {
			return "", nil
		}
		return fmt.Sprintf("Leave endpoint %s of %s from sandbox %s", e.Name(), e.Network().Name(), s.ContainerID()), e.Leave(ctx, s)
	}
}

// TestRaceStress runs random concurrent creates, joins, leaves and deletes
// of networks, endpoints and sandboxes from six goroutines on shared objects
// (stale ones included), and closes the controller at a random moment.
// ErrInUse, ErrNotFound, ErrExists and ErrClosed are expected outcomes;
// any other error fails. A watchdog dumps every goroutine and fails if a
// phase hangs. Afterwards a new controller on the same dirs must restore a
// coherent state (see hardInvariants), delete everything, Settle, leave no
// leak, and every OS thread of the process must be back in the namespace it
// started in.
//
// Not parallel: the thread check needs no other test switching threads
// between namespaces meanwhile (parallel tests wait until sequential ones
// are done).
func TestRaceStress(t *testing.T) {
	cnmtest.SkipUnlessRoot(t)
	startNS, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	hardUnmountUnder(t, host.RunDir)

	const (
		workers  = 6
		duration = 4 * time.Second
	)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	w := &hardStress{ctrl: ctrl}
	closeAt := time.Duration(float64(duration) * (0.6 + 0.35*rand.New(rand.NewPCG(uint64(seed), 99)).Float64()))
	t.Logf("Close after %s", closeAt)

	var (
		unexpected atomic.Int64
		ops        [workers]int
		outcomes   sync.Map // "op kind: error kind" -> *atomic.Int64
	)
	count := func(desc string, err error) {
		kind := "ok"
		if err != nil {
			kind = "unexpected error"
		}
		for _, e := range []error{cnm.ErrInUse, cnm.ErrNotFound, cnm.ErrExists, cnm.ErrClosed} {
			if errors.Is(err, e) {
				kind = e.Error()
				break
			}
		}
		f := strings.Fields(desc)
		verb := f[0]
		if verb == "Delete" || verb == "Join" || verb == "Leave" {
			verb += " " + f[1]
		}
		c, _ := outcomes.LoadOrStore(verb+": "+kind, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
	}

	stop := hardWatchdog(t, "the concurrent operations and Close", duration+30*time.Second)
	start := time.Now()
	closeErr := make(chan error, 1)
	closer := time.AfterFunc(closeAt, func() {
		err := ctrl.Close()
		w.closed.Store(true)
		closeErr <- err
	})
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
			afterClose := 0
			for time.Since(start) < duration && afterClose < 20 {
				if w.closed.Load() {
					afterClose++
				}
				desc, err := w.op(ctx, r)
				if desc == "" {
					continue
				}
				ops[i]++
				count(desc, err)
				if !hardExpectedErr(err) {
					if unexpected.Add(1) <= 20 {
						t.Errorf("worker %d: %s: unexpected error (want nil, ErrInUse, ErrNotFound, ErrExists or ErrClosed): %v", i, desc, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if closer.Stop() { // the run ended before the chosen moment
		require.NoError(t, ctrl.Close())
	} else {
		require.NoError(t, <-closeErr, "Close during the operations")
	}
	stop()
	if n := unexpected.Load(); n > 20 {
		t.Errorf("%d unexpected errors in all (first 20 shown)", n)
	}
	t.Logf("operations per worker: %v", ops)
	var lines []string
	outcomes.Range(func(k, v any) bool {
		lines = append(lines, fmt.Sprintf("%s: %d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(lines)
	t.Logf("outcomes:\n%s", strings.Join(lines, "\n"))

	// The closed controller still answers lookups: what it reports must
	// match the kernel (no IPAM probe: it is closed).
	for _, p := range hardClosedInvariants(ctx, ctrl, host) {
		t.Errorf("after the stress, the closed controller against the kernel: %s", p)
	}

	// A new controller takes back whatever the stress left, coherently.
	stop = hardWatchdog(t, "New on the stressed dirs", 30*time.Second)
	ctrl2, err := cnm.New(host.Options()...)
	stop()
	require.NoError(t, err, "New after the stress must restore what it left")
	t.Cleanup(func() { ctrl2.Close() })
	for _, p := range hardInvariants(ctx, ctrl2, host, hardAsyncWait) {
		t.Errorf("after the stress and a restart: %s", p)
	}

	stop = hardWatchdog(t, "deleting everything after the restart", 60*time.Second)
	require.NoError(t, hardDeleteEverything(ctx, ctrl2))
	stop()
	stop = hardWatchdog(t, "Settle", 30*time.Second)
	has, err := hardSettle(ctx, ctrl2)
	stop()
	if !has {
		t.Errorf("cnm.Controller has no Settle(context.Context) method: issue 9 asks for one that waits until the background cleanup of left and deleted endpoints is done")
	}
	require.NoError(t, err, "Settle")
	cnmtest.AssertNoLeaks(t, host)

	// Every OS thread is back where it started. A thread that osl could not
	// switch back is destroyed with its goroutine, which may take a moment.
	var elsewhere []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if elsewhere = hardThreadsElsewhere(startNS); len(elsewhere) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, l := range elsewhere {
		t.Error(l)
	}
}

// TestAddressNotFreedWhileInUse holds a sandbox's namespace alive with a
// socket (a TCP listener on the endpoint's address) across Sandbox.Delete:
// the namespace is unmounted, but the socket keeps it, its eth0 with the
// address, and the host end of the veth on the bridge. While that interface
// exists, no new endpoint may get its address; the network is a /28, so the
// next-fit allocator comes back to it within a dozen endpoints. After
// Settle, cnm must have deleted the host end itself (taking eth0 with it)
// and freed the address. Once the socket is closed everything goes.
func TestAddressNotFreedWhileInUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	hardUnmountUnder(t, host.RunDir)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "small", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.151.0.0/28")}))
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "held")
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "held")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	held := ep.Info().IPv4
	ifName := ep.Info().InterfaceName

	// The socket that outlives the unmount, and a handle to look inside.
	l, err := cnmtest.Listen(ctx, sb.Key(), netip.AddrPortFrom(held.Addr(), 7000))
	require.NoError(t, err)
	defer l.Close()
	look, err := osl.OpenNamespace(ctx, sb.Key())
	require.NoError(t, err)
	defer look.Close()
	inside, err := look.LinkByName(ctx, ifName)
	require.NoError(t, err)
	hostEnd, err := host.NS.LinkByIndex(ctx, inside.PeerIndex)
	require.NoError(t, err)

	require.NoError(t, sb.Delete(ctx))

	// stillConfigured reports whether the held interface still exists with
	// the address.
	stillConfigured := func() bool {
		l, err := look.LinkByName(ctx, ifName)
		if err != nil {
			return false
		}
		as, err := look.Addresses(ctx, l.Index)
		return err == nil && slices.Contains(as, held)
	}
	if !stillConfigured() {
		t.Logf("cnm removed %s (and so its address %s) at Delete already", ifName, held)
	}

	var made []*cnm.Endpoint
	for i := range 13 {
		name := fmt.Sprintf("next%d", i)
		s, err := ctrl.NewSandbox(ctx, name)
		require.NoError(t, err)
		e, err := nw.CreateEndpoint(ctx, name)
		if errors.Is(err, ipam.ErrPoolExhausted) {
			require.NoError(t, s.Delete(ctx))
			t.Logf("pool exhausted after %d new endpoints: %s was not handed out", i, held.Addr())
			break
		}
		require.NoError(t, err)
		made = append(made, e)
		require.NoError(t, e.Join(ctx, s))
		if e.Info().IPv4.Addr() == held.Addr() && stillConfigured() {
			t.Errorf("endpoint %s got %s, which is still configured on %s in the deleted sandbox's namespace (kept alive by a socket), "+
				"and the host end %s is still on the bridge: the address was released while an interface still used it",
				name, e.Info().IPv4, ifName, hostEnd.Name)
		}
	}

	has, err := hardSettle(ctx, ctrl)
	require.NoError(t, err, "Settle")
	if !has {
		t.Errorf("cnm.Controller has no Settle(context.Context) method: cannot check that cnm deletes the host end of a namespace a socket keeps alive")
	} else {
		if l, err := host.NS.LinkByIndex(ctx, hostEnd.Index); err == nil && l.Name == hostEnd.Name {
			t.Errorf("after Settle, the host end %s (index %d) of the deleted sandbox's veth still exists (master index %d): "+
				"cnm must delete it when the kernel does not, because a socket keeps the namespace alive", l.Name, l.Index, l.MasterIndex)
		}
		if stillConfigured() {
			t.Errorf("after Settle, %s with %s still exists in the deleted sandbox's namespace", ifName, held)
		} else {
			// The interface is gone: the address may now be used again.
			found := false
			for _, e := range made {
				found = found || e.Info().IPv4.Addr() == held.Addr()
			}
			if !found {
				e, err := nw.CreateEndpoint(ctx, "reuse", cnm.WithIPv4Address(held.Addr()))
				if err != nil {
					t.Errorf("after Settle, with %s gone, its address %s must be free again: %v", ifName, held.Addr(), err)
				} else {
					require.NoError(t, e.Delete(ctx))
				}
			}
		}
	}

	// The socket goes: the kernel destroys the namespace and its interfaces.
	require.NoError(t, l.Close())
	require.NoError(t, look.Close())
	require.NoError(t, hardDeleteEverything(ctx, ctrl))
	_, err = hardSettle(ctx, ctrl)
	require.NoError(t, err, "Settle")
	cnmtest.AssertNoLeaks(t, host)
}
