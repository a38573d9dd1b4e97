//go:build linux

package cnmtest

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/firewall"
)

// firewallLeaks reports the nftables rules left in controllers' tables in h.
func firewallLeaks(ctx context.Context, h *HostNS) []string {
	var leaks []string
	if fd, err := h.NS.FD(); err == nil {
		tables, err := firewallTables(fd)
		if err != nil {
			leaks = append(leaks, "list nftables tables: "+err.Error())
		}
		for _, name := range tables {
			if n, err := firewall.CountRules(ctx, fd, name); err != nil || n != 0 {
				leaks = append(leaks, fmt.Sprintf("nftables rules in table %s: %d (err: %v)", name, n, err))
			}
		}
		unix.Close(fd)
	}
	return leaks
}

// firewallTables lists the inet tables of controllers ("cnm-" and an ID) in
// the namespace fd.
func firewallTables(fd int) ([]string, error) {
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range ts {
		if strings.HasPrefix(t.Name, "cnm-") {
			out = append(out, t.Name)
		}
	}
	return out, nil
}
