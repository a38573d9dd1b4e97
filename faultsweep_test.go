//go:build linux

package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

// This file holds the fault sweep of issue 9 ("fails each step on its first,
// second and Nth call, with an invariant check after each failure") and the
// kernel-against-controller invariant checks that the other hardening tests
// (stress_test.go, transient_test.go, foreign_test.go) share. Helpers are
// prefixed "hard" so they never collide with other test files' helpers.

// hardAsyncWait bounds how long an invariant check waits for the kernel to
// finish removing the host end of a veth whose sandbox namespace was dropped.
const hardAsyncWait = 3 * time.Second

// errHardFault is the error the fault sweep injects.
var errHardFault = errors.New("fault sweep: injected failure")

// hardSettle calls ctrl.Settle(ctx), the method that waits until cnm's
// background cleanup of left and deleted endpoints is done, when the
// controller has one. It reports whether it has. (Through an interface, so
// that this package compiles before Settle exists.)
func hardSettle(ctx context.Context, ctrl *cnm.Controller) (bool, error) {
	switch s := any(ctrl).(type) {
	case interface{ Settle(context.Context) error }:
		return true, s.Settle(ctx)
	case interface{ Settle(context.Context) }:
		s.Settle(ctx)
		return true, nil
	}
	return false, nil
}

// hardUnmountUnder registers a cleanup that detaches every mount below dir,
// so that a test that failed halfway (leaving namespace bind mounts in its
// run dir) does not also fail to remove its temporary directories. It runs
// before cleanups registered earlier (t.TempDir's removal included).
func hardUnmountUnder(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		mounts := cnmtest.MountsUnder(dir)
		// Deepest first.
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
		for _, m := range mounts {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})
}

// hardDeleteEverything deletes every sandbox, endpoint and network of ctrl
// through the API and returns the errors.
func hardDeleteEverything(ctx context.Context, ctrl *cnm.Controller) error {
	var errs []error
	for _, sb := range ctrl.Sandboxes() {
		if err := sb.Delete(ctx); err != nil {
			errs = append(errs, fmt.Errorf("delete sandbox %s: %w", sb.ContainerID(), err))
		}
	}
	for _, nw := range ctrl.Networks() {
		for _, ep := range nw.Endpoints() {
			if err := ep.Delete(ctx); err != nil {
				errs = append(errs, fmt.Errorf("delete endpoint %s of network %s: %w", ep.Name(), nw.Name(), err))
			}
		}
		if err := nw.Delete(ctx); err != nil {
			errs = append(errs, fmt.Errorf("delete network %s: %w", nw.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// hardNSView is what one namespace holds: its links, and their addresses
// without loopback and IPv6 link-local ones.
type hardNSView struct {
	label string
	links []osl.Link
	addrs map[int][]netip.Prefix // by link index
}

func (v hardNSView) byName(name string) (osl.Link, bool) {
	for _, l := range v.links {
		if l.Name == name {
			return l, true
		}
	}
	return osl.Link{}, false
}

func (v hardNSView) byIndex(index int) (osl.Link, bool) {
	for _, l := range v.links {
		if l.Index == index {
			return l, true
		}
	}
	return osl.Link{}, false
}

func (v hardNSView) names() string {
	var out []string
	for _, l := range v.links {
		out = append(out, l.Name)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// hardView lists the links and addresses of an open namespace.
func hardView(ctx context.Context, label string, ns *osl.Namespace) (hardNSView, error) {
	v := hardNSView{label: label, addrs: map[int][]netip.Prefix{}}
	links, err := ns.Links(ctx)
	if err != nil {
		return v, fmt.Errorf("%s: list links: %w", label, err)
	}
	v.links = links
	for _, l := range links {
		as, err := ns.Addresses(ctx, l.Index)
		if err != nil {
			if errors.Is(err, osl.ErrLinkNotFound) {
				continue // went away meanwhile (a veth end whose peer was dropped)
			}
			return v, fmt.Errorf("%s: addresses of %s: %w", label, l.Name, err)
		}
		for _, a := range as {
			if a.Addr().IsLoopback() || a.Addr().IsLinkLocalUnicast() {
				continue
			}
			v.addrs[l.Index] = append(v.addrs[l.Index], a)
		}
	}
	return v, nil
}

// hardViewPath is hardView for a namespace file.
func hardViewPath(ctx context.Context, label, path string) (hardNSView, error) {
	ns, err := osl.OpenNamespace(ctx, path)
	if err != nil {
		return hardNSView{label: label}, fmt.Errorf("%s: open namespace %s: %w", label, path, err)
	}
	defer ns.Close()
	return hardView(ctx, label, ns)
}

// hardBridgeName is the bridge of a bridge network: the name given in its
// driver options, else Docker's "br-" and 12 characters of the ID.
func hardBridgeName(nw *cnm.Network) string {
	if name := nw.DriverOptions()["com.docker.network.bridge.name"]; name != "" {
		return name
	}
	return "br-" + nw.ID()[:12]
}

// hardInvariants checks what issue 9 asks after every injected failure,
// comparing what the controller reports with what the kernel holds in the
// host namespace and in every sandbox namespace:
//
//	(a) every address on a kernel interface is reserved exactly once: the
//	    controller's endpoints and gateways hold no address twice, every
//	    address configured on an interface is one of them, on one interface
//	    only, and IPAM refuses to hand it out again (probed with
//	    CreateEndpoint and that address);
//	(b) every joined endpoint has its interface in its sandbox, with its
//	    MAC and its addresses;
//	(c) every veth port of a network's bridge is the host end of a joined
//	    endpoint of that network, and every joined endpoint's host end is a
//	    port of it;
//	(d) every interface in a sandbox, other than lo, belongs to a joined
//	    endpoint.
//
// The host end of a veth whose sandbox namespace was dropped goes
// asynchronously, so (c) is retried for up to wait. It returns one line per
// problem.
func hardInvariants(ctx context.Context, ctrl *cnm.Controller, host *cnmtest.HostNS, wait time.Duration) []string {
	var settled []string
	// Settle reports background removals that failed; one the fault sweep
	// injected is no problem of its own (what it leaves is checked below).
	if _, err := hardSettle(ctx, ctrl); err != nil && !errors.Is(err, errHardFault) {
		settled = append(settled, fmt.Sprintf("Settle: %v", err))
	}
	deadline := time.Now().Add(wait)
	var problems, async []string
	for {
		problems, async = hardKernelInvariants(ctx, ctrl, host)
		if len(async) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	problems = append(append(settled, problems...), async...)
	return append(problems, hardProbeIPAM(ctx, ctrl, host)...)
}

// hardPendingReap starts the report of an interface a leave took out of
// use (named cnm.RetiredPrefix…) still there, and of its host end.
const hardPendingReap = "(reap)"

// hardClosedInvariants is hardInvariants for a closed controller: removals
// Close stopped are no problem (the next New finishes them).
func hardClosedInvariants(ctx context.Context, ctrl *cnm.Controller, host *cnmtest.HostNS) []string {
	return slices.DeleteFunc(hardInvariants(ctx, ctrl, host, hardAsyncWait), func(p string) bool { return strings.HasPrefix(p, hardPendingReap) })
}

// hardKernelInvariants checks (a) without the IPAM probe, (b), (c) and (d).
// Problems of (c), which may still resolve as the kernel finishes dropping
// namespaces, are returned apart.
func hardKernelInvariants(ctx context.Context, ctrl *cnm.Controller, host *cnmtest.HostNS) (problems, async []string) {
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	hostView, err := hardView(ctx, "host namespace", host.NS)
	if err != nil {
		return []string{err.Error()}, nil
	}
	views := []hardNSView{hostView}
	sbViews := map[string]hardNSView{}
	for _, sb := range ctrl.Sandboxes() {
		if sb.Key() == host.Path {
			continue // a host-network sandbox: already seen
		}
		v, err := hardViewPath(ctx, "sandbox "+sb.ContainerID(), sb.Key())
		if err != nil {
			fail("sandbox %s is in the controller but its namespace cannot be read: %v", sb.ContainerID(), err)
			continue
		}
		sbViews[sb.ID()] = v
		views = append(views, v)
	}

	// (a) in memory: no address held twice.
	reserved := map[netip.Addr]string{}
	reserve := func(a netip.Addr, who string) {
		if !a.IsValid() {
			return
		}
		if prev, dup := reserved[a]; dup {
			fail("(a) address %s is held twice by the controller: by %s and by %s", a, prev, who)
			return
		}
		reserved[a] = who
	}
	type joined struct {
		nw   *cnm.Network
		ep   *cnm.Endpoint
		info cnm.EndpointInfo
	}
	var joins []joined
	for _, nw := range ctrl.Networks() {
		for _, fam := range []func() (cnm.NetworkIPAM, bool){nw.IPv4, nw.IPv6} {
			if c, ok := fam(); ok {
				reserve(c.Gateway, "the gateway of network "+nw.Name())
			}
		}
		for _, ep := range nw.Endpoints() {
			info := ep.Info()
			who := fmt.Sprintf("endpoint %s of network %s", ep.Name(), nw.Name())
			reserve(info.IPv4.Addr(), who)
			reserve(info.IPv6.Addr(), who)
			if info.SandboxID != "" {
				joins = append(joins, joined{nw, ep, info})
			}
		}
	}

	// (a) in the kernel: each address on one interface, and held.
	where := map[netip.Addr][]string{}
	for _, v := range views {
		for idx, ps := range v.addrs {
			l, _ := v.byIndex(idx)
			for _, p := range ps {
				where[p.Addr()] = append(where[p.Addr()], v.label+" interface "+l.Name)
			}
		}
	}
	for _, a := range slices.SortedFunc(maps.Keys(where), netip.Addr.Compare) {
		if len(where[a]) > 1 {
			fail("(a) address %s is configured on %d interfaces at once: %s", a, len(where[a]), strings.Join(where[a], "; "))
		}
		if _, ok := reserved[a]; !ok {
			fail("(a) address %s is configured on %s, but it is no gateway's and no endpoint's that the controller reports (Network.Endpoints, Endpoint.Info)", a, strings.Join(where[a], "; "))
		}
	}

	// (b) and (d): joined endpoints have their interfaces, and nothing else
	// is in a sandbox.
	claimed := map[string]map[int]bool{}    // sandbox ID -> link indexes
	hostEnds := map[string]map[int]string{} // network ID -> host end index -> endpoint
	for _, j := range joins {
		what := fmt.Sprintf("endpoint %s of network %s", j.ep.Name(), j.nw.Name())
		sb, err := ctrl.SandboxByID(j.info.SandboxID)
		if err != nil {
			fail("(b) %s is joined to sandbox id %s, which the controller does not know: %v", what, j.info.SandboxID, err)
			continue
		}
		v, ok := sbViews[sb.ID()]
		if !ok {
			continue // reported above
		}
		l, ok := v.byName(j.info.InterfaceName)
		if !ok {
			fail("(b) %s is joined to sandbox %s as %q, but the sandbox has no such interface (it has: %s)", what, sb.ContainerID(), j.info.InterfaceName, v.names())
			continue
		}
		if l.MAC.String() != j.info.MAC.String() {
			fail("(b) %s: interface %s in sandbox %s has MAC %s, the endpoint reports %s", what, l.Name, sb.ContainerID(), l.MAC, j.info.MAC)
		}
		for _, want := range []netip.Prefix{j.info.IPv4, j.info.IPv6} {
			if want.IsValid() && !slices.Contains(v.addrs[l.Index], want) {
				fail("(b) %s: interface %s in sandbox %s lacks the endpoint's address %s (it has %v)", what, l.Name, sb.ContainerID(), want, v.addrs[l.Index])
			}
		}
		if claimed[sb.ID()] == nil {
			claimed[sb.ID()] = map[int]bool{}
		}
		claimed[sb.ID()][l.Index] = true
		if j.nw.Type() == "bridge" {
			if hostEnds[j.nw.ID()] == nil {
				hostEnds[j.nw.ID()] = map[int]string{}
			}
			hostEnds[j.nw.ID()][l.PeerIndex] = what
		}
	}
	retiredPeers := map[int]bool{} // host ends of interfaces a leave retired
	for _, sb := range ctrl.Sandboxes() {
		v, ok := sbViews[sb.ID()]
		if !ok {
			continue
		}
		for _, l := range v.links {
			switch {
			case l.Name == "lo" || claimed[sb.ID()][l.Index]:
			case strings.HasPrefix(l.Name, cnm.RetiredPrefix):
				// Left, its removal in the background not done yet (or
				// stopped by Close: the next New finishes it).
				retiredPeers[l.PeerIndex] = true
				async = append(async, fmt.Sprintf("%s interface %s (index %d) in sandbox %s is still being removed", hardPendingReap, l.Name, l.Index, sb.ContainerID()))
			default:
				fail("(d) interface %s (%s, index %d) in sandbox %s belongs to no joined endpoint", l.Name, l.Kind, l.Index, sb.ContainerID())
			}
		}
	}

	// (c) bridge ports belong to joined endpoints.
	for _, nw := range ctrl.Networks() {
		if nw.Type() != "bridge" {
			continue
		}
		brName := hardBridgeName(nw)
		br, ok := hostView.byName(brName)
		if !ok {
			fail("(c) network %s: its bridge %s is missing from the host namespace", nw.Name(), brName)
			continue
		}
		ports := map[int]bool{}
		for _, l := range hostView.links {
			if l.MasterIndex != br.Index {
				continue
			}
			ports[l.Index] = true
			if retiredPeers[l.Index] {
				async = append(async, fmt.Sprintf("%s %s %s (index %d), a port of bridge %s, is the host end of an interface still being removed",
					hardPendingReap, l.Kind, l.Name, l.Index, brName))
				continue
			}
			if _, owned := hostEnds[nw.ID()][l.Index]; !owned {
				async = append(async, fmt.Sprintf("(c) %s %s (index %d) is a port of bridge %s of network %s, but no joined endpoint of the network owns it",
					l.Kind, l.Name, l.Index, brName, nw.Name()))
			}
		}
		for idx, what := range hostEnds[nw.ID()] {
			if !ports[idx] {
				fail("(c) %s: the host end of its veth (index %d) is not a port of bridge %s", what, idx, brName)
			}
		}
	}
	sort.Strings(async)
	return problems, async
}

// hardProbeIPAM checks the IPAM half of (a): every address configured on an
// interface in the host or a sandbox namespace, inside a network's subnet, is
// refused to a new endpoint asking for it.
func hardProbeIPAM(ctx context.Context, ctrl *cnm.Controller, host *cnmtest.HostNS) []string {
	var problems []string
	paths := map[string]string{"host namespace": host.Path}
	for _, sb := range ctrl.Sandboxes() {
		paths["sandbox "+sb.ContainerID()] = sb.Key()
	}
	for _, label := range slices.Sorted(maps.Keys(paths)) {
		v, err := hardViewPath(ctx, label, paths[label])
		if err != nil {
			continue // reported by hardKernelInvariants
		}
		for idx, ps := range v.addrs {
			l, _ := v.byIndex(idx)
			for _, p := range ps {
				if msg := hardProbeAddress(ctx, ctrl, p.Addr()); msg != "" {
					problems = append(problems, fmt.Sprintf("(a) address %s, configured on %s interface %s: %s", p.Addr(), label, l.Name, msg))
				}
			}
		}
	}
	return problems
}

var hardProbeSeq struct {
	sync.Mutex
	n int
}

// hardProbeAddress asks the network whose subnet holds a for an endpoint with
// exactly that address, and returns what is wrong if IPAM hands it out.
func hardProbeAddress(ctx context.Context, ctrl *cnm.Controller, a netip.Addr) string {
	for _, nw := range ctrl.Networks() {
		opt := cnm.WithIPv4Address(a)
		c, ok := nw.IPv4()
		if a.Is6() {
			opt = cnm.WithIPv6Address(a)
			c, ok = nw.IPv6()
		}
		if !ok || !c.Subnet.Contains(a) {
			continue
		}
		hardProbeSeq.Lock()
		hardProbeSeq.n++
		name := fmt.Sprintf("ipam-probe-%d", hardProbeSeq.n)
		hardProbeSeq.Unlock()
		ep, err := nw.CreateEndpoint(ctx, name, opt)
		switch {
		case err == nil:
			_ = ep.Delete(ctx)
			return fmt.Sprintf("IPAM handed it out again: a new endpoint of network %s asking for it got it", nw.Name())
		case errors.Is(err, cnm.ErrExists):
			return ""
		case errors.Is(err, cnm.ErrNotFound), errors.Is(err, cnm.ErrClosed):
			return "" // the network is going away, or the controller is closed: nothing to probe
		default:
			return fmt.Sprintf("probe endpoint of network %s: unexpected error %v", nw.Name(), err)
		}
	}
	return "it is in no network's subnet"
}

// hardNthHook fails one step on its nth call, counting calls per step name.
type hardNthHook struct {
	mu     sync.Mutex
	step   string // "" in the dry run: count only
	n      int
	calls  map[string]int
	fired  bool
	unseen bool // fired, not yet taken by takeFired
	during string
}

// setDuring names the operation running now, for the messages.
func (h *hardNthHook) setDuring(op string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.fired {
		h.during = op
	}
}

// firedDuring returns the operation during which the fault fired, or "".
func (h *hardNthHook) firedDuring() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.fired {
		return ""
	}
	return h.during
}

func newHardNthHook(step string, n int) *hardNthHook {
	return &hardNthHook{step: step, n: n, calls: map[string]int{}}
}

func (h *hardNthHook) hook(s string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[s]++
	if s == h.step && h.calls[s] == h.n {
		h.fired, h.unseen = true, true
		return errHardFault
	}
	return nil
}

// takeFired reports whether the fault fired since the last call.
func (h *hardNthHook) takeFired() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.unseen
	h.unseen = false
	return f
}

// hardSweepOp is one operation of the fault sweep's workload. Calling do
// again after a failure is its retry.
type hardSweepOp struct {
	name string
	do   func(ctx context.Context) error
}

// hardSweepWorkload returns the sweep's workload on ctrl: two networks (a
// third after one is deleted, so that every network step runs three times),
// three sandboxes, seven joins, three leaves, endpoint, sandbox and network
// deletes, down to nothing. Every step of cnm.Steps runs at least three times.
func hardSweepWorkload(ctrl *cnm.Controller) []hardSweepOp {
	nets := map[string]*cnm.Network{}
	sbs := map[string]*cnm.Sandbox{}
	eps := map[string]*cnm.Endpoint{}
	newNet := func(name string, i int) hardSweepOp {
		return hardSweepOp{"create network " + name, func(ctx context.Context) error {
			nw, err := ctrl.NewNetwork(ctx, "bridge", name,
				cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.140.%d.0/24", i))}),
				cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("fd14:0:0:%d::/64", i))}),
				cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-sweep-" + name}))
			nets[name] = nw
			return err
		}}
	}
	newSandbox := func(name string) hardSweepOp {
		return hardSweepOp{"create sandbox " + name, func(ctx context.Context) error {
			sb, err := ctrl.NewSandbox(ctx, name, cnm.WithHostname(name))
			sbs[name] = sb
			return err
		}}
	}
	newEndpoint := func(sb, nw string) hardSweepOp {
		return hardSweepOp{"create endpoint " + sb + nw, func(ctx context.Context) error {
			ep, err := nets[nw].CreateEndpoint(ctx, sb+nw)
			eps[sb+nw] = ep
			return err
		}}
	}
	join := func(sb, nw string) hardSweepOp {
		return hardSweepOp{"join endpoint " + sb + nw + " to sandbox " + sb, func(ctx context.Context) error {
			return eps[sb+nw].Join(ctx, sbs[sb])
		}}
	}
	leave := func(sb, nw string) hardSweepOp {
		return hardSweepOp{"leave endpoint " + sb + nw + " from sandbox " + sb, func(ctx context.Context) error {
			return eps[sb+nw].Leave(ctx, sbs[sb])
		}}
	}
	deleteEndpoint := func(name string) hardSweepOp {
		return hardSweepOp{"delete endpoint " + name, func(ctx context.Context) error { return eps[name].Delete(ctx) }}
	}
	deleteSandbox := func(name string) hardSweepOp {
		return hardSweepOp{"delete sandbox " + name, func(ctx context.Context) error { return sbs[name].Delete(ctx) }}
	}
	deleteNetwork := func(name string) hardSweepOp {
		return hardSweepOp{"delete network " + name, func(ctx context.Context) error { return nets[name].Delete(ctx) }}
	}
	return []hardSweepOp{
		newNet("A", 0), newNet("B", 1),
		newSandbox("s1"), newSandbox("s2"), newSandbox("s3"),
		newEndpoint("s1", "A"), join("s1", "A"),
		newEndpoint("s2", "A"), join("s2", "A"),
		newEndpoint("s3", "A"), join("s3", "A"),
		newEndpoint("s1", "B"), join("s1", "B"),
		newEndpoint("s2", "B"), join("s2", "B"),
		leave("s1", "A"), join("s1", "A"),
		leave("s2", "B"), deleteEndpoint("s2B"),
		deleteSandbox("s3"),
		leave("s1", "B"), deleteEndpoint("s1B"), deleteNetwork("B"),
		newNet("C", 2), newEndpoint("s1", "C"), join("s1", "C"),
		deleteSandbox("s1"), deleteSandbox("s2"),
		{"delete the endpoints left", func(ctx context.Context) error {
			var errs []error
			for _, nw := range ctrl.Networks() {
				for _, ep := range nw.Endpoints() {
					if err := ep.Delete(ctx); err != nil {
						errs = append(errs, err)
					}
				}
			}
			return errors.Join(errs...)
		}},
		deleteNetwork("A"), deleteNetwork("C"),
	}
}

// TestFaultSweepNth fails every step of cnm.Steps (and every other step the
// workload passes, such as the crash points leave:recorded or
// network-delete:recorded, which a cancelled context fails too where the
// operation does not ignore it, and the reaper's background reap:driver) on
// its 1st, 2nd and 3rd call while a small workload runs. After each failure the
// invariants of hardInvariants must hold; then a retry of the failed
// operation must succeed, and at the end everything deletes with no leak.
func TestFaultSweepNth(t *testing.T) {
	t.Parallel()
	cnmtest.SkipUnlessRoot(t)
	ctx := context.Background()

	// Dry run: every operation succeeds, and every step is counted.
	dry := newHardNthHook("", 0)
	{
		ctrl, host := cnmtest.NewController(t)
		hardUnmountUnder(t, host.RunDir)
		cnm.SetFaultHook(ctrl, dry.hook)
		for _, op := range hardSweepWorkload(ctrl) {
			if err := op.do(ctx); err != nil {
				t.Fatalf("dry run without faults: %s: %v", op.name, err)
			}
		}
		if ps := hardInvariants(ctx, ctrl, host, leakWait); len(ps) > 0 {
			t.Fatalf("dry run without faults: invariants broken:\n%s", strings.Join(ps, "\n"))
		}
		cnmtest.AssertNoLeaks(t, host)
	}
	exported := hardStepNames()
	steps := maps.Clone(exported)
	for s := range dry.calls {
		steps[s] = true
	}
	t.Logf("steps reached by the workload (calls): %v", dry.calls)

	// The cases run side by side: most of their time is spent waiting for
	// the kernel (link deletions, namespace teardown). t.Run from several
	// goroutines gives each its own subtest without taking -parallel slots
	// that the package's other tests share.
	var wg sync.WaitGroup
	slots := make(chan struct{}, hardSweepParallel)
	for _, step := range slices.Sorted(maps.Keys(steps)) {
		for n := 1; n <= 3; n++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				slots <- struct{}{}
				defer func() { <-slots }()
				t.Run(fmt.Sprintf("%s/call%d", step, n), func(t *testing.T) {
					if dry.calls[step] < n {
						t.Skipf("the workload reaches step %s only %d times", step, dry.calls[step])
					}
					hardSweepCase(t, step, n, exported[step])
				})
			}()
		}
	}
	wg.Wait()
}

// hardSweepParallel is how many fault sweep cases run at once.
const hardSweepParallel = 6

// hardStepNames returns the step names of cnm.Steps, whether it lists them
// by operation or in one list.
func hardStepNames() map[string]bool {
	out := map[string]bool{}
	switch steps := any(cnm.Steps).(type) {
	case map[string][]string:
		for _, names := range steps {
			for _, s := range names {
				out[s] = true
			}
		}
	case []string:
		for _, s := range steps {
			out[s] = true
		}
	}
	return out
}

// hardSweepCase runs the workload with step failing on its nth call.
// exported says whether cnm.Steps lists the step; the others are steps the
// workload passes that cnm.Steps leaves out (crash points of the crash
// tests, background steps). A step fails on a cancelled context as on an
// injected fault, unless the operation ignores cancellation.
func hardSweepCase(t *testing.T, step string, n int, exported bool) {
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	hardUnmountUnder(t, host.RunDir)
	h := newHardNthHook(step, n)
	cnm.SetFaultHook(ctrl, h.hook)
	fault := fmt.Sprintf("step %s failed on its call #%d", step, n)
	if !exported {
		fault += " (a step not in cnm.Steps)"
	}
	for _, op := range hardSweepWorkload(ctrl) {
		h.setDuring(op.name)
		err := op.do(ctx)
		fired := h.takeFired()
		switch {
		case err == nil && !fired:
			continue
		case err == nil:
			t.Logf("%s during %q, which succeeded anyway (a background step, or an error that was only logged)", fault, op.name)
		case !errors.Is(err, errHardFault) && h.firedDuring() != "":
			for _, p := range hardInvariants(ctx, ctrl, host, hardAsyncWait) {
				t.Errorf("after %s (during %q, or in a background job it started): %s", fault, h.firedDuring(), p)
			}
			t.Fatalf("%q failed after %s (during %q, or in a background job it started), with an error other than the injected one: %v",
				op.name, fault, h.firedDuring(), err)
		case !errors.Is(err, errHardFault):
			t.Fatalf("%q failed with an error other than the injected one, before %s: %v", op.name, fault, err)
		case !fired:
			t.Fatalf("%q returned the injected error, but the fault fired during the earlier %q (%s): %v", op.name, h.firedDuring(), fault, err)
		}
		outcome := "failed"
		if err == nil {
			outcome = "succeeded"
		}
		for _, p := range hardInvariants(ctx, ctrl, host, hardAsyncWait) {
			t.Errorf("after %q %s (%s): %s", op.name, outcome, fault, p)
		}
		if err == nil {
			continue
		}
		if rerr := op.do(ctx); rerr != nil {
			t.Fatalf("retry of %q after it failed (%s) failed: %v", op.name, fault, rerr)
		}
		for _, p := range hardInvariants(ctx, ctrl, host, hardAsyncWait) {
			t.Errorf("after the retry of %q (%s): %s", op.name, fault, p)
		}
	}
	if !h.fired {
		t.Errorf("%s never happened: the workload passed the step fewer times than in the dry run", fault)
	}
	for _, nw := range ctrl.Networks() {
		t.Errorf("after the workload (%s): network %s is left, with %d endpoints", fault, nw.Name(), len(nw.Endpoints()))
	}
	for _, sb := range ctrl.Sandboxes() {
		t.Errorf("after the workload (%s): sandbox %s is left", fault, sb.ContainerID())
	}
	if _, err := hardSettle(ctx, ctrl); err != nil {
		t.Errorf("Settle: %v", err)
	}
	for _, l := range cnmtest.Leaks(host) {
		t.Errorf("after the workload (%s): leak: %s", fault, l)
	}
}
