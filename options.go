package cnm

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/portalloc"
)

// Option configures a [Controller] in [New].
type Option func(*config) error

type config struct {
	hostNS       string // "" : the calling process's namespace
	dataDir      string
	runDir       string
	defaultPools []ipam.DefaultPool // nil: Docker's

	leaveHostSysctls bool            // WithoutHostSysctls
	ephemeralPorts   portalloc.Range // WithEphemeralPorts; zero: portalloc.DefaultEphemeral

	logger *slog.Logger // WithLogger; nil: discard

	healLimit   int           // WithHealLimit; 0: DefaultHealLimit
	healWindow  time.Duration // WithHealLimit; 0: DefaultHealWindow
	noHealing   bool          // WithoutHealing
	watchBuffer int           // tests only: the watchers' receive buffer

	// Network plugins (plugins.go).
	plugins pluginConfig // WithPluginDirs, WithPlugin, WithPluginTimeout

	// Multi-host networks (global.go).
	global    *GlobalStore // WithGlobalStore; nil: local networks only
	advertise netip.Addr   // WithAdvertiseAddress
}

// Defaults of [New].
const (
	DefaultDataDir = "/var/lib/cnm"
	DefaultRunDir  = "/run/cnm"
)

func absDir(field, dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("%w: %s %q: must be an absolute path", ErrInvalid, field, dir)
	}
	return nil
}

// fileInDir checks that path is absolute and its directory exists, so that
// writing the file later cannot fail for want of it.
func fileInDir(field, path string) error {
	if err := absDir(field, path); err != nil {
		return err
	}
	st, err := os.Stat(filepath.Dir(path))
	if err != nil || !st.IsDir() {
		return fmt.Errorf("%w: %s %q: directory %s does not exist", ErrInvalid, field, path, filepath.Dir(path))
	}
	return nil
}

// WithHostNamespace makes the controller put every host-side object (bridges,
// host veth ends, nftables tables) in the network namespace file at path, for
// example a bind mount under /run/netns. Default: the namespace of the
// calling process (/proc/self/ns/net).
func WithHostNamespace(path string) Option {
	return func(c *config) error {
		if err := absDir("host namespace", path); err != nil {
			return err
		}
		c.hostNS = path
		return nil
	}
}

// WithDataDir sets the directory for the controller's persistent state.
// Default [DefaultDataDir]. It is made if missing.
func WithDataDir(dir string) Option {
	return func(c *config) error {
		if err := absDir("data dir", dir); err != nil {
			return err
		}
		c.dataDir = dir
		return nil
	}
}

// WithRunDir sets the directory for runtime files: the sandboxes' namespace
// bind mounts (netns/) and their hosts and resolv.conf files (sandboxes/).
// Default [DefaultRunDir]. It is made if missing.
func WithRunDir(dir string) Option {
	return func(c *config) error {
		if err := absDir("run dir", dir); err != nil {
			return err
		}
		c.runDir = dir
		return nil
	}
}

// WithDefaultAddressPools replaces the pools that networks without a subnet
// take theirs from, like Docker's default-address-pools: each Base is cut
// into subnets of /Size. Default: Docker's list (172.17.0.0/16 ...
// 172.31.0.0/16, then 192.168.0.0/16 in /20s), which has no IPv6 pool; give
// one here to let IPv6 networks go without a subnet.
func WithDefaultAddressPools(pools ...ipam.DefaultPool) Option {
	return func(c *config) error {
		for _, p := range pools {
			if !p.Base.IsValid() || p.Base != p.Base.Masked() || p.Size < p.Base.Bits() || p.Size > p.Base.Addr().BitLen() {
				return fmt.Errorf("%w: default address pool base %s size %d", ErrInvalid, p.Base, p.Size)
			}
		}
		c.defaultPools = slices.Clone(pools)
		return nil
	}
}

// IPAMConfig is one address family's addressing of a network.
type IPAMConfig struct {
	// Subnet of the network. Zero: one is taken from the default pools, and
	// then IPRange, Gateway and AuxAddresses must be zero too.
	Subnet netip.Prefix
	// IPRange is a sub-range of Subnet that endpoints' addresses are taken
	// from. Zero: the whole subnet.
	IPRange netip.Prefix
	// Gateway is the address on the bridge that sandboxes route through.
	// Zero: the first usable address of Subnet.
	Gateway netip.Addr
	// AuxAddresses are reserved: never handed to an endpoint.
	AuxAddresses map[string]netip.Addr
	// PrefixLength asks, when Subnet is zero, for a subnet of this length
	// from the default pools ("any /24"). Zero: the pools' own size.
	PrefixLength int
}

func (c IPAMConfig) validate(family string, v6 bool) error {
	field := "ipv4"
	if v6 {
		field = "ipv6"
	}
	if c.PrefixLength != 0 {
		max := 32
		if v6 {
			max = 128
		}
		switch {
		case c.Subnet.IsValid():
			return fmt.Errorf("%w: %s prefix length %d: give a subnet or a prefix length, not both", ErrInvalid, field, c.PrefixLength)
		case c.PrefixLength < 1 || c.PrefixLength > max:
			return fmt.Errorf("%w: %s prefix length %d: out of range 1-%d", ErrInvalid, field, c.PrefixLength, max)
		}
	}
	if !c.Subnet.IsValid() {
		if c.IPRange.IsValid() || c.Gateway.IsValid() || len(c.AuxAddresses) > 0 {
			return fmt.Errorf("%w: %s: ip-range %v, gateway %v and aux addresses %v need a subnet", ErrInvalid, field, c.IPRange, c.Gateway, c.AuxAddresses)
		}
		return nil
	}
	if c.Subnet.Addr().Is6() != v6 || c.Subnet.Addr().Is4In6() {
		return fmt.Errorf("%w: %s subnet %s is not an %s prefix", ErrInvalid, field, c.Subnet, family)
	}
	if c.Subnet != c.Subnet.Masked() {
		return fmt.Errorf("%w: %s subnet %s has host bits set (did you mean %s?)", ErrInvalid, field, c.Subnet, c.Subnet.Masked())
	}
	if c.IPRange.IsValid() {
		if c.IPRange != c.IPRange.Masked() || c.IPRange.Bits() < c.Subnet.Bits() || !c.Subnet.Contains(c.IPRange.Addr()) {
			return fmt.Errorf("%w: %s ip-range %s is not a prefix inside subnet %s", ErrInvalid, field, c.IPRange, c.Subnet)
		}
	}
	if err := noZone(field+" gateway", c.Gateway); err != nil {
		return err // Contains would call it outside the subnet
	}
	if c.Gateway.IsValid() {
		if !c.Subnet.Contains(c.Gateway) {
			return fmt.Errorf("%w: %s gateway %s is outside subnet %s", ErrInvalid, field, c.Gateway, c.Subnet)
		}
		if c.Gateway == c.Subnet.Addr() && c.Subnet.Bits() < c.Subnet.Addr().BitLen()-1 {
			return fmt.Errorf("%w: %s gateway %s is the network address of subnet %s", ErrInvalid, field, c.Gateway, c.Subnet)
		}
	}
	for name, a := range c.AuxAddresses {
		if !c.Subnet.Contains(a) {
			return fmt.Errorf("%w: %s aux address %s=%s is outside subnet %s", ErrInvalid, field, name, a, c.Subnet)
		}
	}
	return nil
}

// NetworkOption configures a [Network] in [Controller.NewNetwork].
type NetworkOption func(*networkConfig) error

type networkConfig struct {
	ipv4, ipv6   *IPAMConfig
	internal     bool
	labels       map[string]string
	driverOpts   map[string]string
	ipamDriver   string
	ipamDriverOp map[string]string
}

// WithIPv4 sets the network's IPv4 addressing. Without it, a network whose
// driver takes addresses gets an IPv4 subnet from the default pools
// (172.17.0.0/16 ... 172.31.0.0/16, then 192.168.0.0/16 in /20s).
func WithIPv4(c IPAMConfig) NetworkOption {
	return func(o *networkConfig) error {
		if err := c.validate("IPv4", false); err != nil {
			return err
		}
		c.AuxAddresses = maps.Clone(c.AuxAddresses)
		o.ipv4 = &c
		return nil
	}
}

// WithIPv6 makes the network dual stack with this IPv6 addressing. The
// default pools hold no IPv6 prefix, so Subnet is required in practice.
func WithIPv6(c IPAMConfig) NetworkOption {
	return func(o *networkConfig) error {
		if err := c.validate("IPv6", true); err != nil {
			return err
		}
		c.AuxAddresses = maps.Clone(c.AuxAddresses)
		o.ipv6 = &c
		return nil
	}
}

// WithInternal makes the network internal: its sandboxes reach each other
// but get no default route through it and no way out of the host.
func WithInternal() NetworkOption {
	return func(o *networkConfig) error {
		o.internal = true
		return nil
	}
}

// WithLabels attaches free-form metadata to the network (copied). The key
// "cnm.egress" is cnm's own (it marks the gateway bridge network) and is
// refused.
func WithLabels(labels map[string]string) NetworkOption {
	return func(o *networkConfig) error {
		for k := range labels {
			if k == "" {
				return fmt.Errorf("%w: label with an empty key", ErrInvalid)
			}
			if k == labelEgress {
				return fmt.Errorf("%w: label %q: reserved for cnm's gateway bridge network", ErrInvalid, k)
			}
		}
		o.labels = maps.Clone(labels)
		return nil
	}
}

// WithDriverOptions passes options to the network's driver, with Docker's
// keys (for the bridge driver: com.docker.network.bridge.name, ...). The
// driver rejects keys it does not know, with [ErrInvalid] naming the key.
func WithDriverOptions(opts map[string]string) NetworkOption {
	return func(o *networkConfig) error {
		o.driverOpts = maps.Clone(opts)
		return nil
	}
}

// WithIPAMDriver chooses the network's IPAM driver and its options:
// "default" (the local allocator, the default) or "null" (no addresses at
// all, as Docker's null IPAM). Neither takes options.
func WithIPAMDriver(name string, opts map[string]string) NetworkOption {
	return func(o *networkConfig) error {
		if name == "" {
			return fmt.Errorf("%w: ipam driver: empty name", ErrInvalid)
		}
		for k := range opts {
			return fmt.Errorf("%w: ipam driver %q: unknown option %q", ErrInvalid, name, k)
		}
		o.ipamDriver, o.ipamDriverOp = name, maps.Clone(opts)
		return nil
	}
}

// EndpointOption configures an [Endpoint] in [Network.CreateEndpoint].
type EndpointOption func(*endpointConfig) error

type endpointConfig struct {
	ipv4, ipv6 netip.Addr
	mac        net.HardwareAddr
	aliases    []string
	ports      []PortMapping
	service    string
}

// WithIPv4Address asks for this IPv4 address instead of the next free one. It
// must be inside the network's subnet and free.
func WithIPv4Address(a netip.Addr) EndpointOption {
	return func(o *endpointConfig) error {
		if !a.Is4() {
			return fmt.Errorf("%w: ipv4 address %q is not an IPv4 address", ErrInvalid, a)
		}
		o.ipv4 = a
		return nil
	}
}

// WithIPv6Address asks for this IPv6 address instead of the next free one.
// It has no zone: the interface is the endpoint's.
func WithIPv6Address(a netip.Addr) EndpointOption {
	return func(o *endpointConfig) error {
		if err := noZone("ipv6 address", a); err != nil {
			return err
		}
		if !a.Is6() || a.Is4In6() {
			return fmt.Errorf("%w: ipv6 address %s is not an IPv6 address", ErrInvalid, a)
		}
		o.ipv6 = a
		return nil
	}
}

// WithMACAddress sets the interface's MAC address: 6 bytes, unicast, not
// all zero. Default: a random locally administered unicast address.
func WithMACAddress(mac net.HardwareAddr) EndpointOption {
	return func(o *endpointConfig) error {
		if err := linkrules.CheckMAC(mac); err != nil {
			return fmt.Errorf("%w: mac address %q: %v", ErrInvalid, mac.String(), err)
		}
		o.mac = append(net.HardwareAddr(nil), mac...)
		return nil
	}
}

// WithAliases gives the endpoint extra names on its network, reported in
// [EndpointInfo.Aliases] for service discovery.
func WithAliases(aliases ...string) EndpointOption {
	return func(o *endpointConfig) error {
		for _, a := range aliases {
			if err := validDNSName("alias", a); err != nil {
				return err
			}
		}
		o.aliases = append([]string(nil), aliases...)
		return nil
	}
}

// SandboxOption configures a [Sandbox] in [Controller.NewSandbox].
type SandboxOption func(*sandboxConfig) error

type sandboxConfig struct {
	hostname, domainname string
	netnsPath            string
	hostsPath, resolv    string // made under the sandbox's run dir when not given
	dns                  []netip.Addr
	extraHosts           []ExtraHost
	hostNetwork          bool
}

// ExtraHost is one additional line of a sandbox's /etc/hosts.
type ExtraHost struct {
	Name string
	IP   netip.Addr
}

// validHostname checks a name written to a sandbox's hosts file: at most
// 253 characters, in dot-separated labels of 1 to 63 letters, digits and
// '-', neither first nor last (RFC 1123). Nothing else may pass: a control
// character or white space would add a line or a name to the file.
func validHostname(field, s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%w: %s %.20q... is longer than 253 characters", ErrInvalid, field, s)
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: %s %q: not a valid DNS name", ErrInvalid, field, s)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%w: %s %q: not a valid DNS name", ErrInvalid, field, s)
			}
		}
	}
	return nil
}

// noZone refuses an address with an IPv6 zone ("fe80::1%eth0"). A zone is
// any string (netip.ParseAddr takes "fe80::1%x\n6.6.6.6 registry"), so in a
// hosts file or resolv.conf it could add a line; and it names an interface
// of whichever namespace reads it.
func noZone(field string, a netip.Addr) error {
	if a.Zone() != "" {
		return fmt.Errorf("%w: %s %q: has an IPv6 zone; give the address without it", ErrInvalid, field, a.String())
	}
	return nil
}

// WithHostname sets the sandbox's host name, written to its hosts file with
// each of its addresses.
func WithHostname(name string) SandboxOption {
	return func(o *sandboxConfig) error {
		if err := validHostname("hostname", name); err != nil {
			return err
		}
		o.hostname = name
		return nil
	}
}

// WithDomainname sets the sandbox's domain name (hosts file: "ip host.domain host").
func WithDomainname(name string) SandboxOption {
	return func(o *sandboxConfig) error {
		if err := validHostname("domainname", name); err != nil {
			return err
		}
		o.domainname = name
		return nil
	}
}

// WithNetnsPath adopts a network namespace the runtime made (a bind mount or
// /proc/PID/ns/net) instead of making one. Deleting the sandbox then removes
// cnm's interfaces from it but leaves the namespace itself alone.
func WithNetnsPath(path string) SandboxOption {
	return func(o *sandboxConfig) error {
		if err := absDir("netns path", path); err != nil {
			return err
		}
		o.netnsPath = path
		return nil
	}
}

// WithHostsPath writes the sandbox's hosts file at path instead of under the
// run dir.
func WithHostsPath(path string) SandboxOption {
	return func(o *sandboxConfig) error {
		if err := fileInDir("hosts path", path); err != nil {
			return err
		}
		o.hostsPath = path
		return nil
	}
}

// WithResolvConfPath writes the sandbox's resolv.conf at path instead of
// under the run dir.
func WithResolvConfPath(path string) SandboxOption {
	return func(o *sandboxConfig) error {
		if err := fileInDir("resolv.conf path", path); err != nil {
			return err
		}
		o.resolv = path
		return nil
	}
}

// WithDNS sets the sandbox's name servers, without IPv6 zones. Default: the
// host's /etc/resolv.conf servers except loopback ones (unreachable from a
// sandbox); if none remain, Google's public servers, as Docker does.
func WithDNS(servers ...netip.Addr) SandboxOption {
	return func(o *sandboxConfig) error {
		for _, s := range servers {
			if !s.IsValid() {
				return fmt.Errorf("%w: dns server: invalid address", ErrInvalid)
			}
			if err := noZone("dns server", s); err != nil {
				return err
			}
		}
		o.dns = append([]netip.Addr(nil), servers...)
		return nil
	}
}

// WithExtraHosts adds lines to the sandbox's hosts file. Each name is a
// DNS name, each address has no IPv6 zone.
func WithExtraHosts(hosts ...ExtraHost) SandboxOption {
	return func(o *sandboxConfig) error {
		for _, h := range hosts {
			if err := validHostname("extra host name", h.Name); err != nil {
				return err
			}
			if !h.IP.IsValid() {
				return fmt.Errorf("%w: extra host %q: invalid address", ErrInvalid, h.Name)
			}
			if err := noZone(fmt.Sprintf("extra host %q address", h.Name), h.IP); err != nil {
				return err
			}
		}
		o.extraHosts = append([]ExtraHost(nil), hosts...)
		return nil
	}
}

// WithHostNetwork makes a sandbox that shares the controller's host
// namespace instead of having its own, for endpoints of "host" networks
// (Docker's --network host). Such a sandbox joins host networks only.
func WithHostNetwork() SandboxOption {
	return func(o *sandboxConfig) error {
		o.hostNetwork = true
		return nil
	}
}

// JoinOption configures [Endpoint.Join].
type JoinOption func(*joinConfig) error

type joinConfig struct {
	gatewayPriority int
}

// WithGatewayPriority ranks the endpoint when the sandbox chooses its default
// gateway: the highest priority wins, then endpoints of non-internal networks
// before internal ones (for drivers that offer a gateway on internal
// networks; the bridge driver does not), then the network name. Default 0.
func WithGatewayPriority(n int) JoinOption {
	return func(o *joinConfig) error {
		o.gatewayPriority = n
		return nil
	}
}
