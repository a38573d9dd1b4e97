package cnm

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/seed53641549/cnm/resolver"
)

// hostsHeader is what every sandbox's hosts file starts with (as Docker's).
const hostsHeader = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`

// writeHosts writes the sandbox's hosts file for the endpoints eps: the
// loopback names, the extra hosts, and the sandbox's host name on each of
// its addresses. The file is rewritten in place (not replaced by a rename),
// so a bind mount of it into a container sees every update; it is not
// rewritten when its content would not change.
func (sb *Sandbox) writeHosts(eps []*Endpoint) error {
	var addrs []netip.Addr
	for _, ep := range eps {
		for _, a := range []netip.Prefix{ep.ipv4, ep.ipv6} {
			if a.IsValid() {
				addrs = append(addrs, a.Addr())
			}
		}
	}
	b := hostsFile(&sb.cfg, addrs)
	sb.mu.Lock()
	same := sb.hostsWritten != nil && bytes.Equal(sb.hostsWritten, b)
	sb.mu.Unlock()
	if same {
		return nil // a sandbox without a host name: joins do not change the file
	}
	if err := os.WriteFile(sb.cfg.hostsPath, b, 0o644); err != nil {
		return fmt.Errorf("write hosts file: %w", err)
	}
	sb.mu.Lock()
	sb.hostsWritten = b
	sb.mu.Unlock()
	return nil
}

// hostsFile returns the content of a hosts file: the header, a line per
// extra host of cfg, and if cfg has a host name, a line per address in
// addrs with the host name (after the full name, with a domain name). It
// writes names and addresses as they are: the options that filled cfg let
// through no white space, control character or IPv6 zone.
func hostsFile(cfg *sandboxConfig, addrs []netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString(hostsHeader)
	for _, h := range cfg.extraHosts {
		fmt.Fprintf(&b, "%s\t%s\n", h.IP, h.Name)
	}
	if name := cfg.hostname; name != "" {
		names := name
		if cfg.domainname != "" {
			names = name + "." + cfg.domainname + " " + name
		}
		for _, a := range addrs {
			fmt.Fprintf(&b, "%s\t%s\n", a, names)
		}
	}
	return b.Bytes()
}

// Fallback name servers when the host has none a sandbox can reach, as Docker.
var fallbackDNS = []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")}

// hostResolvConf is read for the default name servers.
const hostResolvConf = "/etc/resolv.conf"

// nameServers returns the sandbox's name servers: those given with
// WithDNS, else the host's minus loopback ones (a sandbox cannot reach the
// host's 127.0.0.53) with the host's search and options lines (extra),
// else the fallback servers.
func (sb *Sandbox) nameServers() (servers []netip.Addr, extra []string) {
	if len(sb.cfg.dns) > 0 {
		return sb.cfg.dns, nil
	}
	servers, extra = readHostResolvConf(hostResolvConf)
	if len(servers) == 0 {
		servers = fallbackDNS
	}
	return servers, extra
}

// writeResolvConf writes the sandbox's resolv.conf: once its embedded DNS
// server runs, that server (127.0.0.11) with the host's search lines;
// before, the servers given with WithDNS, or else the host's servers minus
// loopback ones (a sandbox cannot reach the host's 127.0.0.53) with the
// host's search and options lines, or else the fallback servers.
func (sb *Sandbox) writeResolvConf() error {
	servers, extra := sb.nameServers()
	sb.mu.Lock()
	embedded := sb.resolver != nil
	sb.mu.Unlock()
	if embedded {
		// The embedded server answers, and forwards the rest upstream.
		// ndots:0 asks it for a short name first, as Docker does, rather
		// than for the name with each search domain appended.
		servers = []netip.Addr{resolver.Addr}
		extra = slices.DeleteFunc(extra, func(l string) bool { return strings.HasPrefix(l, "options") })
		extra = append(extra, "options ndots:0")
	}
	if err := os.WriteFile(sb.cfg.resolv, resolvConf(servers, extra), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

// resolvConf returns the content of a resolv.conf: a nameserver line per
// server, then the lines extra (the host's search and options lines).
func resolvConf(servers []netip.Addr, extra []string) []byte {
	var b bytes.Buffer
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// readHostResolvConf returns the non-loopback name servers of a resolv.conf
// and its search and options lines. A missing file yields nothing.
func readHostResolvConf(path string) (servers []netip.Addr, extra []string) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			a, err := netip.ParseAddr(fields[1])
			if err == nil && !a.IsLoopback() {
				servers = append(servers, a.WithZone(""))
			}
		case "search", "domain", "options":
			extra = append(extra, strings.Join(fields, " "))
		}
	}
	return servers, extra
}
