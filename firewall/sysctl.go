package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/seed53641549/cnm/osl"
)

// readSysctl returns the value of the sysctl at path (below /proc/sys, e.g.
// "net/bridge/bridge-nf-call-iptables") as seen in namespace nsFD, and false if
// it does not exist there. osl reads it from a thread inside the namespace;
// the caller's thread never moves.
func readSysctl(nsFD int, path string) (string, bool, error) {
	ns, err := osl.OpenNamespace(context.Background(), fmt.Sprintf("/proc/self/fd/%d", nsFD))
	if err != nil {
		return "", false, fmt.Errorf("read sysctl %s: %w", path, err)
	}
	defer ns.Close()
	v, err := ns.Sysctl(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return strings.TrimSpace(v), true, nil
}
