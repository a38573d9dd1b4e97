package cnm

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// hostsEntry is one line of a hosts file as a resolver reads it.
type hostsEntry struct {
	addr  netip.Addr
	names []string
}

// parseHosts reads a hosts file as glibc does: '#' starts a comment, fields
// are separated by white space, the first is an address and the rest are
// names. A line with no name is dropped, a line whose address does not
// parse is kept with an invalid address (so that the test sees it).
func parseHosts(b []byte) []hostsEntry {
	var out []hostsEntry
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, _ := netip.ParseAddr(f[0])
		out = append(out, hostsEntry{a, f[1:]})
	}
	return out
}

// parseNameservers returns the nameserver lines of a resolv.conf, as
// written ('#' and ';' start comments).
func parseNameservers(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line, _, _ = strings.Cut(line, ";")
		if f := strings.Fields(line); len(f) > 0 && f[0] == "nameserver" {
			out = append(out, strings.Join(f[1:], " "))
		}
	}
	return out
}

// FuzzSandboxFiles gives a host name, a domain name, two extra hosts and two
// name servers to the sandbox options, and checks that either an option
// refuses them with ErrInvalid (and an error message with no line break),
// or the hosts file and resolv.conf that the writers make from them parse
// back to exactly the entries given: no line, name or server more or less.
// Empty strings leave the host name, domain name, an extra host (name and
// address both empty) or a server out; an address that does not parse is given as the zero Addr.
func FuzzSandboxFiles(f *testing.F) {
	f.Add("web", "example.com", "registry", "10.0.0.9", "", "", "10.0.0.53", "")
	f.Add("web", "", "db", "fd00::9", "db2", "10.0.0.10", "fd00::53", "8.8.8.8")
	// A zone is any string: this one would add "6.6.6.6 registry".
	f.Add("web", "", "registry", "fe80::1%x\n6.6.6.6 registry", "", "", "", "")
	f.Add("web", "", "", "", "", "", "fe80::1%x\nnameserver 6.6.6.6", "")
	f.Add("web", "", "a", "fe80::1%eth0", "", "", "fe80::53%eth0", "")
	f.Add("web\n6.6.6.6 evil", "", "a", "10.0.0.1", "", "", "", "")
	f.Add("web", "example.com\nsearch evil", "a", "10.0.0.1", "", "", "", "")
	f.Add("web", "", "a\tb", "10.0.0.1", "", "", "", "")
	f.Add("web", "", "a#b", "10.0.0.1", "", "", "", "")
	f.Add("web", "", "a b", "10.0.0.1", "", "", "", "")
	f.Add("web", "", "a\x00", "10.0.0.1", "", "", "", "")
	f.Add("web\x7f", "", "a", "10.0.0.1", "", "", "", "")
	f.Add("web", "", "a", "not an address", "", "", "", "")
	f.Add("-web", "ex..com", "a", "::ffff:10.0.0.1", "", "", "::ffff:8.8.8.8", "")
	f.Add(strings.Repeat("a", 64), strings.Repeat("b.", 127), "a", "10.0.0.1", "", "", "", "")
	ep4, ep6 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")
	header := parseHosts([]byte(hostsHeader))

	f.Fuzz(func(t *testing.T, hostname, domain, name1, ip1, name2, ip2, dns1, dns2 string) {
		addr := func(s string) netip.Addr { a, _ := netip.ParseAddr(s); return a }
		var opts []SandboxOption
		if hostname != "" {
			opts = append(opts, WithHostname(hostname))
		}
		if domain != "" {
			opts = append(opts, WithDomainname(domain))
		}
		var extra []ExtraHost
		for _, h := range [][2]string{{name1, ip1}, {name2, ip2}} {
			if h != [2]string{} {
				extra = append(extra, ExtraHost{h[0], addr(h[1])})
			}
		}
		opts = append(opts, WithExtraHosts(extra...))
		var dns []netip.Addr
		for _, s := range []string{dns1, dns2} {
			if s != "" {
				dns = append(dns, addr(s))
			}
		}
		if len(dns) > 0 {
			opts = append(opts, WithDNS(dns...))
		}
		var cfg sandboxConfig
		for _, o := range opts {
			if err := o(&cfg); err != nil {
				require.ErrorIs(t, err, ErrInvalid)
				require.NotContains(t, err.Error(), "\n", "the value is quoted in the message")
				return
			}
		}

		// Accepted: the files hold exactly what was given.
		want := slices.Clone(header)
		for _, h := range extra {
			want = append(want, hostsEntry{h.IP, []string{h.Name}})
		}
		if hostname != "" {
			names := []string{hostname}
			if domain != "" {
				names = []string{hostname + "." + domain, hostname}
			}
			want = append(want, hostsEntry{ep4, names}, hostsEntry{ep6, names})
		}
		require.Equal(t, want, parseHosts(hostsFile(&cfg, []netip.Addr{ep4, ep6})))

		if len(dns) > 0 {
			got := parseNameservers(resolvConf(cfg.dns, nil))
			require.Len(t, got, len(dns))
			for i, s := range got {
				a, err := netip.ParseAddr(s)
				require.NoError(t, err, "nameserver %q", s)
				require.Equal(t, dns[i], a)
			}
		}
	})
}
