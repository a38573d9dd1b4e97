//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/osl"
)

// TestMain lets the test binary act as the plugin: with
// CNM_DOCKER_PLUGIN_SOCKET set it serves, as the command does.
func TestMain(m *testing.M) {
	if sock := os.Getenv("CNM_DOCKER_PLUGIN_SOCKET"); sock != "" {
		err := run(config{socket: sock, hostNS: "/proc/self/ns/net", state: os.Getenv("CNM_DOCKER_PLUGIN_STATE")}, nil)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	if state := os.Getenv("CNM_DOCKER_PLUGIN_COUNT_RULES"); state != "" {
		n, err := countRules(state)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		fmt.Println(n)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// countRules counts the rules in the plugin's nftables table in this
// namespace.
func countRules(state string) (int, error) {
	owner, err := loadOwner(state)
	if err != nil {
		return 0, err
	}
	host, err := osl.OpenNamespace(context.Background(), "/proc/self/ns/net")
	if err != nil {
		return 0, err
	}
	defer host.Close()
	fd, err := host.FD()
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return firewall.CountRules(context.Background(), fd, owner.Table())
}

// TestDockerd runs a real Docker daemon against the plugin, both in a
// throwaway network, mount and PID namespace (dockerd_test.sh): a network
// of cnm's bridge driver, with cnm's IPAM, two containers that talk over
// TCP, and removal that leaves no link and no rule. It needs root and
// Debian's docker.io, busybox-static and tini, and skips without them.
func TestDockerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, bin := range []string{"/usr/sbin/dockerd", "/usr/bin/docker", "/bin/busybox", "/usr/bin/tini", "/usr/bin/unshare"} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("needs %s: apt-get install docker.io busybox-static tini", bin)
		}
	}
	if testing.Short() {
		t.Skip("starts a Docker daemon: not in -short")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("dockerd_test.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc",
		"tini", "-s", "--", "sh", script, dir, self)
	out, err := cmd.CombinedOutput()
	t.Logf("dockerd_test.sh:\n%s", out)
	if err != nil {
		t.Fatalf("dockerd_test.sh: %v", err)
	}
	if !strings.Contains(string(out), "PASS: dockerd drove cnm") {
		t.Fatal("dockerd_test.sh did not pass")
	}
}
