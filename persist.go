package cnm

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// recordSchema is written into every record; restore refuses records of a
// newer schema instead of misreading them.
const recordSchema = 1

// Store keys (networks in the durable store, sandboxes and endpoints in the
// runtime store). Every record is written when its operation commits, and
// deleted when its object is deleted; network deletions first mark their
// record, so a crash halfway is finished at the next New (a sandbox's
// deletion needs no mark: its records go only once its namespace is gone,
// and a record of a namespace that is gone is removed at the next New).
// Kernel objects made before a crash but never recorded carry marks (the
// bridge alias, the rule comments, the run dir's files) by which restore
// finds and removes them.
const (
	keyRunDir      = "meta/run-dir"
	keyOwner       = "meta/controller-id"
	prefixNetwork  = "network/"
	prefixEndpoint = "endpoint/"
	prefixSandbox  = "sandbox/"
)

func networkKey(id string) string        { return prefixNetwork + id }
func endpointKey(nid, eid string) string { return prefixEndpoint + nid + "/" + eid }
func sandboxKey(id string) string        { return prefixSandbox + id }

type ipamRecord struct {
	Driver  string                `json:"driver,omitempty"`  // "" : default
	PoolID  string                `json:"pool_id,omitempty"` // for allocators that keep their own state
	Subnet  netip.Prefix          `json:"subnet"`
	IPRange netip.Prefix          `json:"ip_range,omitzero"`
	Gateway netip.Addr            `json:"gateway"`
	Aux     map[string]netip.Addr `json:"aux,omitempty"`
}

type networkRecord struct {
	Schema   int               `json:"schema"`
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Driver   string            `json:"driver"`
	Internal bool              `json:"internal,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	IPv4     *ipamRecord       `json:"ipv4,omitempty"`
	IPv6     *ipamRecord       `json:"ipv6,omitempty"`
	Deleting bool              `json:"deleting,omitempty"`
}

type endpointRecord struct {
	Schema    int           `json:"schema"`
	ID        string        `json:"id"`
	Name      string        `json:"name"`
	NetworkID string        `json:"network_id"`
	MAC       string        `json:"mac"`
	IPv4      netip.Prefix  `json:"ipv4,omitzero"`
	IPv6      netip.Prefix  `json:"ipv6,omitzero"`
	Aliases   []string      `json:"aliases,omitempty"`
	Ports     []PortMapping `json:"ports,omitempty"`
	// Service and its virtual IPs, as the endpoint was made with them.
	Service     string     `json:"service,omitempty"`
	ServiceIPv4 netip.Addr `json:"service_ipv4,omitzero"`
	ServiceIPv6 netip.Addr `json:"service_ipv6,omitzero"`
	// Deleting: the endpoint was deleted, but an interface of it may still
	// exist; its addresses stay reserved until the interface is gone.
	Deleting bool `json:"deleting,omitempty"`
	// Set while joined. IfIndex and IfMAC identify the interface: restore
	// takes back only an interface of that name with that index and MAC.
	SandboxID       string        `json:"sandbox_id,omitempty"`
	InterfaceName   string        `json:"interface,omitempty"`
	IfIndex         int           `json:"if_index,omitempty"`
	IfMAC           string        `json:"if_mac,omitempty"`   // "": the endpoint's own MAC
	Bindings        []PortMapping `json:"bindings,omitempty"` // published ports as bound
	Gateway         netip.Addr    `json:"gateway,omitzero"`
	GatewayIPv6     netip.Addr    `json:"gateway_ipv6,omitzero"`
	GatewayPriority int           `json:"gateway_priority,omitempty"`
}

type sandboxRecord struct {
	Schema      int          `json:"schema"`
	ID          string       `json:"id"`
	ContainerID string       `json:"container_id"`
	Key         string       `json:"key"`
	NSID        osl.ID       `json:"nsid"` // the namespace Key opened when the sandbox was made
	Owned       bool         `json:"owned,omitempty"`
	Dir         string       `json:"dir"`
	HostsPath   string       `json:"hosts_path"`
	ResolvPath  string       `json:"resolv_path"`
	Hostname    string       `json:"hostname,omitempty"`
	Domainname  string       `json:"domainname,omitempty"`
	NetnsPath   string       `json:"netns_path,omitempty"`
	DNS         []netip.Addr `json:"dns,omitempty"`
	ExtraHosts  []ExtraHost  `json:"extra_hosts,omitempty"`
	HostNetwork bool         `json:"host_network,omitempty"`
}

func ipamRec(i *networkIPAM) *ipamRecord {
	if i == nil {
		return nil
	}
	r := &ipamRecord{Subnet: i.subnet, IPRange: i.ipRange, Gateway: i.gateway, Aux: i.aux}
	if ipam.KeepsState(i.alloc) || i.driver == globalIPAMDriver {
		// A plugin's pool, or a global one: every host and every restart
		// names it by its ID.
		r.PoolID = i.poolID
	}
	if i.driver != ipam.DefaultDriver {
		r.Driver = i.driver
	}
	if i.null {
		r.Subnet = netip.Prefix{} // the null pool is requested without one
	}
	return r
}

func (n *Network) record() networkRecord {
	return networkRecord{
		Schema: recordSchema, ID: n.id, Name: n.name, Driver: n.driver.Type(), Internal: n.internal,
		Labels: n.labels, Options: n.options, IPv4: ipamRec(n.ipv4), IPv6: ipamRec(n.ipv6),
	}
}

// record returns the endpoint's record, as joined to sb with its current
// join state, or as not joined when sb is nil. (A join records sb before it
// commits ep.sandbox.)
func (ep *Endpoint) record(sb *Sandbox) endpointRecord {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	r := endpointRecord{
		Schema: recordSchema, ID: ep.id, Name: ep.name, NetworkID: ep.nw.id, MAC: ep.mac.String(),
		IPv4: ep.ipv4, IPv6: ep.ipv6, Aliases: ep.aliases, Ports: ep.ports,
		Service: ep.service, ServiceIPv4: ep.vip4, ServiceIPv6: ep.vip6,
	}
	if sb != nil {
		r.SandboxID, r.InterfaceName, r.IfIndex, r.Bindings = sb.id, ep.ifName, ep.ifIndex, ep.bindings
		if ep.ifMAC != nil {
			r.IfMAC = ep.ifMAC.String()
		}
		r.Gateway, r.GatewayIPv6, r.GatewayPriority = ep.gw4, ep.gw6, ep.gwPriority
	}
	return r
}

func (sb *Sandbox) record() sandboxRecord {
	return sandboxRecord{
		Schema: recordSchema, ID: sb.id, ContainerID: sb.containerID, Key: sb.ns.Path(), NSID: sb.ns.ID(), Owned: sb.owned,
		Dir: sb.dir, HostsPath: sb.cfg.hostsPath, ResolvPath: sb.cfg.resolv,
		Hostname: sb.cfg.hostname, Domainname: sb.cfg.domainname, NetnsPath: sb.cfg.netnsPath,
		DNS: sb.cfg.dns, ExtraHosts: sb.cfg.extraHosts, HostNetwork: sb.cfg.hostNetwork,
	}
}

// put returns the store op that writes rec as JSON at key.
func put(key string, rec any) (store.Op, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return store.Op{}, fmt.Errorf("encode %s: %w", key, err)
	}
	return store.Put(key, b), nil
}

// storeFor returns the store a key belongs in: networks and metadata in
// the durable store, sandboxes and endpoints in the runtime store.
func (c *Controller) storeFor(key string) store.Store {
	if strings.HasPrefix(key, prefixSandbox) || strings.HasPrefix(key, prefixEndpoint) {
		return c.runtime
	}
	return c.store
}

// save writes records atomically; all ops go to the store of the first.
func (c *Controller) save(ctx context.Context, ops ...store.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if err := c.storeFor(ops[0].Key).Txn(context.WithoutCancel(ctx), ops...); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	return nil
}

// saveRecord writes one record.
func (c *Controller) saveRecord(ctx context.Context, key string, rec any) error {
	op, err := put(key, rec)
	if err != nil {
		return err
	}
	return c.save(ctx, op)
}

func parseMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		return nil
	}
	return m
}
