package overlay

import (
	"reflect"
	"time"

	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// kernelState is what a test checks is unchanged by the ESP probe: the
// test's own namespace's links, xfrm states and policies, the host
// namespace's xfrm states and policies, and the process's open namespace
// files and sockets.
type kernelState struct {
	links                []string
	states, policies     int
	hostStates, hostPols int
	open                 map[string]bool // the process's open namespaces and sockets ("net:[…]", "socket:[…]")
}

func snapshotKernel(t *testing.T, host *osl.Namespace) kernelState {
	t.Helper()
	var s kernelState
	links, err := netlink.LinkList()
	require.NoError(t, err)
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	slices.Sort(s.links)
	states, err := netlink.XfrmStateList(netlink.FAMILY_ALL)
	require.NoError(t, err)
	policies, err := netlink.XfrmPolicyList(netlink.FAMILY_ALL)
	require.NoError(t, err)
	s.states, s.policies = len(states), len(policies)
	h, err := xfrmHandleIn(host)
	require.NoError(t, err)
	states, err = h.XfrmStateList(netlink.FAMILY_ALL)
	require.NoError(t, err)
	policies, err = h.XfrmPolicyList(netlink.FAMILY_ALL)
	h.Close() // before the sockets are listed: it is no probe's
	require.NoError(t, err)
	s.hostStates, s.hostPols = len(states), len(policies)
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	s.open = map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		if strings.HasPrefix(target, "net:[") || strings.HasPrefix(target, "socket:[") {
			s.open[target] = true
		}
	}
	return s
}

// assertKernelBack checks that the kernel state is as before, and that
// the process has no namespace or socket open that it did not have before.
// Those are the whole process's: another test's may still be closing, so
// a difference must last 2 s to count; one closed meanwhile is no leak (an
// earlier test's driver may drop a namespace it kept idle).
func assertKernelBack(t *testing.T, before kernelState, host *osl.Namespace) {
	t.Helper()
	var now kernelState
	for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(20 * time.Millisecond) {
		now = snapshotKernel(t, host)
		maps.DeleteFunc(now.open, func(target string, _ bool) bool { return before.open[target] })
		if len(now.open) == 0 {
			now.open = before.open
		}
		if reflect.DeepEqual(before, now) {
			return
		}
	}
	assert.Equal(t, before, now, "the probe leaves nothing behind")
}

// TestEncryptedRefused: a network asking for encryption, with any value,
// is refused with ErrNotSupported naming the option, after one probe of
// the kernel whose answer is kept; the probe leaves nothing behind (no
// namespace file, mount, link, xfrm state or policy, open namespace or
// socket). Bad input is refused before the probe runs.
func TestEncryptedRefused(t *testing.T) {
	h1, _ := newHosts(t, 1500)
	ctx := context.Background()
	before := snapshotKernel(t, h1.ns)

	req := testNet("e0e0e0e0e0e0e0e0", 4300, "10.70.0.0/24")
	req.Options[OptionEncrypted] = ""
	err := h1.d.CreateNetwork(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrNotSupported)
	t.Log(err)
	assert.Contains(t, err.Error(), `option encrypted=""`)
	assert.Contains(t, err.Error(), "ESP")
	assert.Contains(t, err.Error(), req.ID)
	assert.False(t, h1.d.hasNetwork(req.ID))
	assert.Equal(t, 1, h1.d.esp.runs)

	// Any value asks; the answer is kept.
	req.Options[OptionEncrypted] = "true"
	err = h1.d.CreateNetwork(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrNotSupported)
	assert.Contains(t, err.Error(), `option encrypted="true"`)
	err = h1.d.RestoreNetwork(ctx, req)
	require.ErrorIs(t, err, driverapi.ErrNotSupported)
	assert.Equal(t, 1, h1.d.esp.runs, "one probe per driver")
	assert.False(t, h1.d.hasNetwork(req.ID))

	assertClean(t, h1)
	assertKernelBack(t, before, h1.ns)

	// Bad input first: no probe for a network refused anyway.
	d, err := New(Config{HostNS: h1.ns, AdvertiseAddress: h1.vtep, RunDir: h1.runDir})
	require.NoError(t, err)
	bad := testNet("e1e1e1e1e1e1e1e1", 4301, "10.71.0.0/24")
	bad.Options[OptionEncrypted] = ""
	bad.Options[OptionMTU] = "big"
	require.ErrorIs(t, d.CreateNetwork(ctx, bad), driverapi.ErrInvalid)
	assert.Equal(t, 0, d.esp.runs)

	// Without the option the same network is made.
	delete(req.Options, OptionEncrypted)
	require.NoError(t, h1.d.CreateNetwork(ctx, req))
	require.NoError(t, h1.d.DeleteNetwork(ctx, req.ID))
	assertClean(t, h1)
}

// TestESPProbe runs the probe with the real ESP set-up (whatever this
// kernel answers), with policies but no security association (ESP is
// required and nothing can carry it: the datagram must not arrive), and
// with no set-up at all (plaintext: it must arrive), so that both of the
// probe's answers are seen on any kernel. Each run leaves nothing behind.
func TestESPProbe(t *testing.T) {
	h1, _ := newHosts(t, 1500)
	ctx := context.Background()
	dir := t.TempDir()
	before := snapshotKernel(t, h1.ns)

	a, err := runESPProbe(ctx, dir, espProbeTimeout, installESP)
	require.NoError(t, err)
	t.Logf("this kernel: %+v", a)
	if !a.works {
		assert.Contains(t, a.why, "ESP")
	}

	a, err = runESPProbe(ctx, dir, espProbeTimeout, func(nss [2]*osl.Namespace, port uint16) (string, error) {
		return installESPPolicies(nss, port, 0x1234)
	})
	require.NoError(t, err)
	assert.False(t, a.works, "ESP required, no security association: nothing is delivered")
	assert.Contains(t, a.why, "the kernel drops ESP")
	assert.Contains(t, a.why, "not delivered within 1s")

	a, err = runESPProbe(ctx, dir, espProbeTimeout, func([2]*osl.Namespace, uint16) (string, error) { return "", nil })
	require.NoError(t, err)
	assert.Equal(t, espAnswer{works: true}, a, "no xfrm at all: the datagram arrives")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries)
	assertKernelBack(t, before, h1.ns)
}
