//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/seed53641549/cnm/osl"
)

// cniContender runs the CNI reference bridge plugin with host-local IPAM as
// a CNI runtime does: it makes the namespace in process, then executes the
// plugin binary with the CNI_* environment and the network configuration on
// stdin, from a thread inside the host namespace.
type cniContender struct {
	host    *osl.Namespace
	binDir  string // holds the bridge and host-local binaries
	nsDir   string
	bridge  string
	netconf []byte
}

func newCNI(host *osl.Namespace, binDir, bridge string, subnet netip.Prefix, dir string) (*cniContender, error) {
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
			return nil, fmt.Errorf("cni plugin %s: %w (scripts/bench.sh installs it)", p, err)
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "cni-bench",
		"type":       "bridge",
		"bridge":     bridge,
		"isGateway":  true,
		"ipMasq":     false, // cnm's masquerade is one rule per network, made before any container
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": subnet.String()}}},
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			"dataDir": filepath.Join(dir, "cni-ipam"),
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return &cniContender{host: host, binDir: binDir, nsDir: dir, bridge: bridge, netconf: b}, nil
}

func (c *cniContender) name() string { return "CNI bridge" }

// exec runs the bridge plugin for one command inside the host namespace.
func (c *cniContender) exec(ctx context.Context, command, id, netns string) ([]byte, error) {
	var out, errOut bytes.Buffer
	err := c.host.Do(func() error {
		cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "bridge"))
		cmd.Env = []string{
			"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
			"CNI_IFNAME=eth0", "CNI_PATH=" + c.binDir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		}
		cmd.Stdin = bytes.NewReader(c.netconf)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		return cmd.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("cni %s %s: %w: %s %s", command, id, err, out.String(), errOut.String())
	}
	return out.Bytes(), nil
}

func (c *cniContender) setup(ctx context.Context, i int) (*box, error) {
	id := fmt.Sprintf("cni-%d", i)
	ns, err := osl.NewNamespace(ctx, filepath.Join(c.nsDir, id))
	if err != nil {
		return nil, err
	}
	path := ns.Path()
	ns.Close() // the plugin opens the namespace by path itself
	out, err := c.exec(ctx, "ADD", id, path)
	if err != nil {
		_ = osl.RemoveNamespaceFile(path)
		return nil, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("cni ADD %s: unexpected result %q", id, out)
	}
	addr, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return nil, err
	}
	return &box{
		key:  path,
		addr: addr,
		teardown: func(ctx context.Context) error {
			if _, err := c.exec(ctx, "DEL", id, path); err != nil {
				return err
			}
			return osl.RemoveNamespaceFile(path)
		},
	}, nil
}

func (c *cniContender) close(ctx context.Context) error { return c.host.DeleteLink(ctx, c.bridge) }
