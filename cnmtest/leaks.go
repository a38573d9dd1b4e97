package cnmtest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// leakWait bounds how long AssertNoLeaks waits for the kernel's asynchronous
// cleanup: the host end of a veth whose sandbox namespace was dropped
// disappears only when the kernel's cleanup_net work has run, and a device
// with packets queued on an unresolved neighbour (a SYN to a peer that never
// answered ARP) is freed only when resolution gives up, about 3 s later.
const leakWait = 10 * time.Second

// AssertNoLeaks fails the test if h still holds anything a controller made:
// links other than those named in keep (loopback is always kept), nftables
// rules in controllers' tables, namespace files or mounts under the run dir,
// or sandbox files. Call it after deleting everything the test made.
func AssertNoLeaks(t testing.TB, h *HostNS, keep ...string) {
	t.Helper()
	for _, l := range Leaks(h, keep...) {
		t.Errorf("cnmtest: leak: %s", l)
	}
}

// Leaks returns a description of each leftover that AssertNoLeaks reports.
// It waits up to a few seconds for links to go, then reports what remains.
func Leaks(h *HostNS, keep ...string) []string {
	ctx := context.Background()
	keep = append(keep, "lo")
	var leaks []string
	deadline := time.Now().Add(leakWait)
	for {
		leaks = leaks[:0]
		links, err := h.NS.Links(ctx)
		if err != nil {
			return []string{"list links: " + err.Error()}
		}
		for _, l := range links {
			if !slices.Contains(keep, l.Name) {
				leaks = append(leaks, "link "+l.Name+" ("+l.Kind+")")
			}
		}
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	leaks = append(leaks, firewallLeaks(ctx, h)...)

	folders, _ := filepath.Glob(filepath.Join(h.RunDir, "cnm-*"))
	for _, f := range folders {
		for _, sub := range []string{"netns", "sandboxes", "overlay"} {
			entries, _ := os.ReadDir(filepath.Join(f, sub))
			for _, e := range entries {
				leaks = append(leaks, "file "+filepath.Join(f, sub, e.Name()))
			}
		}
	}
	for _, m := range MountsUnder(h.RunDir) {
		leaks = append(leaks, "mount "+m)
	}
	return leaks
}

// MountsUnder returns the mount points below dir, as the process's
// /proc/self/mountinfo lists them (none where there is no such file).
func MountsUnder(dir string) []string {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}
