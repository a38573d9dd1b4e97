package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// reopen makes a new controller on the same host namespace and dirs.
func reopen(t *testing.T, host *cnmtest.HostNS) *cnm.Controller {
	t.Helper()
	c, err := cnm.New(host.Options()...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRestartKeepsEverything(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	web, err := ctrl.NewNetwork(ctx, "bridge", "web",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.80.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd80::/64")}),
		cnm.WithLabels(map[string]string{"tier": "front"}))
	require.NoError(t, err)
	back, err := ctrl.NewNetwork(ctx, "bridge", "back", cnm.WithInternal(),
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.81.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, web, "a")
	b, epB := container(t, web, "b")
	epAB, err := back.CreateEndpoint(ctx, "a-back")
	require.NoError(t, err)
	require.NoError(t, epAB.Join(ctx, a))
	spare, err := web.CreateEndpoint(ctx, "spare")
	require.NoError(t, err)
	before := map[string]cnm.EndpointInfo{}
	for _, ep := range []*cnm.Endpoint{epA, epB, epAB, spare} {
		before[ep.ID()] = ep.Info()
	}

	require.NoError(t, ctrl.Close())
	// No controller runs: the sandboxes keep talking.
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 9000), tcpTimeout))
	// Someone deletes the internal network's bridge meanwhile: the next
	// controller makes it again and plugs a's port back in.
	backBridge := "br-" + back.ID()[:12]
	require.NoError(t, host.NS.DeleteLink(ctx, backBridge))

	ctrl2 := reopen(t, host)
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 9001), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), netip.AddrPortFrom(epA.Info().IPv6.Addr(), 9002), tcpTimeout))

	web2, err := ctrl2.NetworkByName("web")
	require.NoError(t, err)
	assert.Equal(t, web.ID(), web2.ID())
	assert.Equal(t, "front", web2.Labels()["tier"])
	back2, err := ctrl2.NetworkByID(back.ID())
	require.NoError(t, err)
	assert.True(t, back2.Internal())
	for _, nw := range []*cnm.Network{web2, back2} {
		for _, ep := range nw.Endpoints() {
			want, ok := before[ep.ID()]
			require.True(t, ok, "unknown endpoint %s", ep.Name())
			assert.Equal(t, want, ep.Info(), "endpoint %s", ep.Name())
			delete(before, ep.ID())
		}
	}
	assert.Empty(t, before, "every endpoint came back")
	a2, err := ctrl2.SandboxByID(a.ID())
	require.NoError(t, err)
	assert.Equal(t, a.Key(), a2.Key())
	assert.Equal(t, "a", a2.ContainerID())
	require.Len(t, a2.Endpoints(), 2)
	assert.Equal(t, "eth0", a2.Endpoints()[0].Info().InterfaceName)
	assert.Equal(t, []string{"10.80.0.1 eth0"}, defaultRoutes(t, a2, 4))
	br, err := host.NS.LinkByName(ctx, backBridge)
	require.NoError(t, err, "the deleted bridge is made again")
	ports := 0
	links, err := host.NS.Links(ctx)
	require.NoError(t, err)
	for _, l := range links {
		if l.MasterIndex == br.Index {
			ports++
		}
	}
	assert.Equal(t, 1, ports, "a's port is back on it")

	// New endpoints get new addresses; names stay unique.
	fresh, err := web2.CreateEndpoint(ctx, "fresh")
	require.NoError(t, err)
	for _, ep := range web2.Endpoints() {
		if ep != fresh {
			assert.NotEqual(t, ep.Info().IPv4, fresh.Info().IPv4)
		}
	}
	_, err = web2.CreateEndpoint(ctx, "spare")
	require.ErrorIs(t, err, cnm.ErrExists)
	_, err = ctrl2.NewSandbox(ctx, "a")
	require.ErrorIs(t, err, cnm.ErrExists)

	// Everything still works and goes away cleanly.
	c, _ := container(t, web2, "c")
	require.NoError(t, cnmtest.TCPExchange(ctx, a2.Key(), c.Key(), addrPort(epA.Info().IPv4, 9003), tcpTimeout))
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, host)
}

func TestSecondControllerOnOneDataDirFailsFast(t *testing.T) {
	t.Parallel()
	_, host := cnmtest.NewController(t)
	start := time.Now()
	_, err := cnm.New(host.Options()...)
	require.ErrorIs(t, err, store.ErrLocked)
	assert.ErrorContains(t, err, host.DataDir)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestStoreProblemsAreClearErrors(t *testing.T) {
	t.Parallel()
	host := cnmtest.NewHostNS(t)
	require.NoError(t, os.MkdirAll(host.DataDir, 0o700))
	path := filepath.Join(host.DataDir, store.FileName)
	require.NoError(t, os.WriteFile(path, []byte("not a database, definitely not one, and long enough"), 0o600))
	_, err := cnm.New(host.Options()...)
	require.ErrorIs(t, err, store.ErrCorrupt)
	b, _ := os.ReadFile(path)
	assert.Equal(t, "not a database, definitely not one, and long enough", string(b), "never reset")

	// A data dir made with another run dir is refused.
	host2 := cnmtest.NewHostNS(t)
	c, err := cnm.New(host2.Options()...)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	_, err = cnm.New(cnm.WithHostNamespace(host2.Path), cnm.WithDataDir(host2.DataDir), cnm.WithRunDir(t.TempDir()))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, host2.RunDir)
}

func TestRebootSimulation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.82.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-reboot"}))
	require.NoError(t, err)
	container(t, nw, "a")
	_, epB := container(t, nw, "b")
	require.NoError(t, ctrl.Close())

	// "Reboot": every namespace, link and rule of the host is gone.
	nsDir := filepath.Join(host.RunDir, "cnm-"+ctrl.ID(), "netns")
	entries, err := os.ReadDir(nsDir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NoError(t, osl.RemoveNamespaceFile(filepath.Join(nsDir, e.Name())))
	}
	require.NoError(t, host.NS.DeleteLink(ctx, "br-reboot"))
	fw, err := firewall.New(ctx, host.FD(t), ctrl.FirewallTable())
	require.NoError(t, err)
	require.NoError(t, fw.Delete(ctx))
	fw.Close()

	ctrl2 := reopen(t, host)
	assert.Empty(t, ctrl2.Sandboxes(), "sandboxes whose namespace is gone are removed")
	nw2, err := ctrl2.NetworkByName("n")
	require.NoError(t, err)
	assert.Empty(t, nw2.Endpoints(), "their endpoints go with them")
	br, err := host.NS.LinkByName(ctx, "br-reboot")
	require.NoError(t, err, "the bridge is made again")
	addrs, err := host.NS.Addresses(ctx, br.Index)
	require.NoError(t, err)
	assert.Contains(t, addrs, netip.MustParsePrefix("10.82.0.1/24"))
	// Rules are back: networks are isolated again, and the freed address is free.
	n, err := firewall.CountRules(ctx, host.FD(t), ctrl2.FirewallTable())
	require.NoError(t, err)
	assert.Positive(t, n)
	c, _ := container(t, nw2, "c", cnm.WithIPv4Address(epB.Info().IPv4.Addr()))
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, c.Key(), netip.MustParseAddrPort("10.82.0.1:80"), tcpTimeout))

	require.NoError(t, c.Delete(ctx))
	require.NoError(t, nw2.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// crashSteps are the steps at which TestCrashRecovery kills the child.
var crashSteps = []string{
	"network:driver", "network:commit",
	"sandbox:namespace", "sandbox:files", "sandbox:commit",
	"endpoint:service", "endpoint:driver", "endpoint:commit",
	"join:driver", "join:interface", "join:gateway", "join:hosts", "join:services", "join:commit",
	"leave:recorded",
	"sandbox-delete:namespace",
	"network-delete:recorded",
}

// TestCrashChild is the child of TestCrashRecovery: it runs a scenario and
// kills itself with SIGKILL at the step named in CNM_CRASH_STEP.
func TestCrashChild(t *testing.T) {
	step := os.Getenv("CNM_CRASH_STEP")
	if step == "" {
		t.Skip("run by TestCrashRecovery")
	}
	host := &cnmtest.HostNS{Path: os.Getenv("CNM_CRASH_HOSTNS"), RunDir: os.Getenv("CNM_CRASH_RUNDIR"), DataDir: os.Getenv("CNM_CRASH_DATADIR")}
	ctrl, err := cnm.New(host.Options()...)
	require.NoError(t, err)
	killAt(ctrl, step)
	crashScenario(t, ctrl, step, "bridge", "n", []cnm.NetworkOption{cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.90.0.0/24")})},
		cnm.WithService("web"), cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", HostPort: 8080, ContainerPort: 80}))
}

// killAt makes ctrl's fault hook kill the process with SIGKILL at step.
func killAt(ctrl *cnm.Controller, step string) {
	cnm.SetFaultHook(ctrl, func(s string) error {
		if s == step {
			if me, err := os.FindProcess(os.Getpid()); err == nil {
				_ = me.Kill() // SIGKILL
			}
			time.Sleep(time.Hour)
		}
		return nil
	})
}

// crashScenario is what the crash tests' children run until killAt ends
// them: a network, a sandbox, an endpoint (with epOpts) joined, left and
// joined again, then the sandbox and the network deleted. Reaching the end
// fails the test: the step was never reached.
func crashScenario(t *testing.T, ctrl *cnm.Controller, step, driver, name string, netOpts []cnm.NetworkOption, epOpts ...cnm.EndpointOption) {
	t.Helper()
	ctx := context.Background()
	nw, err := ctrl.NewNetwork(ctx, driver, name, netOpts...)
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "c1", cnm.WithHostname("c1"))
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "e1", epOpts...)
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	require.NoError(t, ep.Leave(ctx, sb))
	require.NoError(t, ep.Join(ctx, sb))
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	t.Fatalf("step %s was never reached", step)
}

// runCrashChild runs the test named child in a process of its own with env
// added, and requires that it was killed with SIGKILL (at step).
func runCrashChild(t *testing.T, child, step string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "child: %v\n%s", err, out)
	ws, _ := exit.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child was not killed at %s:\n%s", step, out)
}

// TestCrashRecovery kills a controller process (SIGKILL) at each step of
// create-network, create-sandbox, create-endpoint, join, leave and delete,
// then checks that the next New reconciles: no address lost or handed out
// twice, everything recorded works, and once deleted nothing is left.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	cnmtest.SkipUnlessRoot(t)
	for _, step := range crashSteps {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			host := cnmtest.NewHostNS(t)
			runCrashChild(t, "TestCrashChild", step, "CNM_CRASH_STEP="+step, "CNM_CRASH_HOSTNS="+host.Path,
				"CNM_CRASH_RUNDIR="+host.RunDir, "CNM_CRASH_DATADIR="+host.DataDir)

			ctrl := reopen(t, host)
			for _, nw := range ctrl.Networks() {
				// The bridge has a port for each joined endpoint, no more.
				links, err := host.NS.Links(ctx)
				require.NoError(t, err)
				ports, joined := 0, 0
				for _, l := range links {
					if l.Alias == "cnm:"+ctrl.ID()+":"+nw.ID() {
						for _, p := range links {
							if p.MasterIndex == l.Index {
								ports++
							}
						}
					}
				}
				held := map[netip.Addr]bool{}
				for _, ep := range nw.Endpoints() {
					if ep.Info().SandboxID != "" {
						joined++
					}
					a := ep.Info().IPv4.Addr()
					require.False(t, held[a], "address %s held twice", a)
					held[a] = true
					if vip := ep.Info().ServiceIPv4; vip.IsValid() {
						require.False(t, held[vip], "service VIP %s is an endpoint's address", vip)
						held[vip] = true
					}
					if sbID := ep.Info().SandboxID; sbID != "" {
						sb, err := ctrl.SandboxByID(sbID)
						require.NoError(t, err)
						assert.Contains(t, linkNames(t, sb.Key()), ep.Info().InterfaceName)
						// A joined backend is its own sandbox's client: its
						// service table is there.
						assert.Equal(t, []string{ctrl.FirewallTable()}, nftTables(t, sb.Key()), "service table")
					}
				}
				assert.Equal(t, joined, ports, "bridge ports")
				// Published ports: exactly those of the joined endpoints.
				var bound []netip.AddrPort
				for _, ep := range nw.Endpoints() {
					if ep.Info().SandboxID != "" {
						for _, p := range ep.Info().PortMappings {
							bound = append(bound, netip.AddrPortFrom(p.HostIP, p.HostPort))
						}
					}
				}
				assert.ElementsMatch(t, bound, publishedPorts(t, host, ctrl), "published ports")
				// Each address is either held by an endpoint or free: none leaked.
				for i := 2; i <= 4; i++ {
					a := netip.AddrFrom4([4]byte{10, 90, 0, byte(i)})
					probe, err := nw.CreateEndpoint(ctx, fmt.Sprintf("probe%d", i), cnm.WithIPv4Address(a))
					if held[a] {
						require.ErrorIs(t, err, cnm.ErrExists, "address %s", a)
						continue
					}
					require.NoError(t, err, "address %s leaked", a)
					require.NoError(t, probe.Delete(ctx))
				}
			}
			// The recovered state is usable: clean it all up through the API.
			deleteAll(t, ctrl)
			cnmtest.AssertNoLeaks(t, host)
		})
	}
}

// publishedPorts lists the host address and port of every port published in
// the controller's firewall table.
func publishedPorts(t *testing.T, host *cnmtest.HostNS, ctrl *cnm.Controller) []netip.AddrPort {
	t.Helper()
	fw, err := firewall.New(context.Background(), host.FD(t), ctrl.FirewallTable())
	require.NoError(t, err)
	defer fw.Close()
	ports, err := fw.Ports(context.Background())
	require.NoError(t, err)
	var out []netip.AddrPort
	for _, p := range ports {
		out = append(out, netip.AddrPortFrom(p.HostIP, p.HostPort))
	}
	return out
}
