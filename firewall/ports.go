//go:build linux

package firewall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

// This file holds the published ports: each [Port] is one element of one of
// the DNAT maps (dnat.go), and the kernel's maps are the only record of
// them.

// protocols maps [Port.Proto] to its IP protocol number.
var protocols = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

// protoName is the inverse of protocols.
func protoName(n byte) string {
	for name, v := range protocols {
		if v == n {
			return name
		}
	}
	return fmt.Sprintf("proto-%d", n)
}

// validateKey checks the fields that identify p's element: Proto, HostIP
// and HostPort.
func (p Port) validateKey() error {
	bad := func(field string, value any, why string) error {
		return fmt.Errorf("%w: port %s: %s %v: %s", errdefs.ErrInvalid, p, field, value, why)
	}
	if _, ok := protocols[p.Proto]; !ok {
		return bad("protocol", fmt.Sprintf("%q", p.Proto), "must be tcp, udp or sctp")
	}
	switch {
	case !p.HostIP.IsValid():
		return bad("host ip", p.HostIP, "missing")
	case p.HostIP.Is4In6():
		return bad("host ip", p.HostIP, "IPv4-mapped IPv6 address, use the IPv4 address")
	case p.HostIP.Zone() != "":
		return bad("host ip", p.HostIP, "has a zone")
	case p.HostIP == netip.IPv6Loopback():
		return bad("host ip", p.HostIP, "the kernel never routes a packet from ::1 out of the host")
	case p.HostPort == 0:
		return bad("host port", p.HostPort, "must be 1 to 65535")
	}
	return nil
}

// validate checks every field of p, so that bad input is reported before
// anything is sent.
func (p Port) validate() error {
	if err := p.validateKey(); err != nil {
		return err
	}
	bad := func(field string, value any, why string) error {
		return fmt.Errorf("%w: port %s: %s %v: %s", errdefs.ErrInvalid, p, field, value, why)
	}
	if err := validateID(p.NetworkID); err != nil {
		return fmt.Errorf("port %s: %w", p, err)
	}
	switch {
	case !validBridge(p.Bridge):
		return bad("bridge", fmt.Sprintf("%q", p.Bridge), bridgeRule)
	case !p.ContainerIP.IsValid():
		return bad("container ip", p.ContainerIP, "missing")
	case p.ContainerIP.Is4In6():
		return bad("container ip", p.ContainerIP, "IPv4-mapped IPv6 address, use the IPv4 address")
	case p.ContainerIP.Zone() != "":
		return bad("container ip", p.ContainerIP, "has a zone")
	case p.ContainerIP.Is4() != p.HostIP.Is4():
		return bad("container ip", p.ContainerIP, "not of the host ip's family")
	case p.ContainerIP.IsUnspecified():
		return bad("container ip", p.ContainerIP, "unspecified")
	case p.ContainerPort == 0:
		return bad("container port", p.ContainerPort, "must be 1 to 65535")
	}
	return nil
}

// portKey identifies a port's element: no two ports with the same key can
// be published.
type portKey struct {
	proto    string
	hostIP   netip.Addr
	hostPort uint16
}

func (p Port) key() portKey { return portKey{p.Proto, p.HostIP, p.HostPort} }

// checkBatch validates ports (all fields, or the key only) and refuses a
// key listed twice.
func checkBatch(ports []Port, keyOnly bool) error {
	seen := make(map[portKey]bool, len(ports))
	for _, p := range ports {
		var err error
		if keyOnly {
			err = p.validateKey()
		} else {
			err = p.validate()
		}
		if err != nil {
			return err
		}
		if seen[p.key()] && !keyOnly {
			return fmt.Errorf("%w: port %s: host port %s %s listed twice", errdefs.ErrInvalid, p, p.Proto,
				netip.AddrPortFrom(p.HostIP, p.HostPort))
		}
		seen[p.key()] = true
	}
	return nil
}

// mapIndex returns the index in f.maps of the map that holds p (see
// newPortMaps).
func mapIndex(p Port) int {
	i := 0
	if p.HostIP.Is6() {
		i++
	}
	if p.HostIP.IsUnspecified() {
		i += 2
	}
	return i
}

// word returns b padded with zeros to whole 32-bit registers, as the
// fields of a concatenation are laid out.
func word(b ...byte) []byte {
	return append(b, make([]byte, (4-len(b)%4)%4)...)
}

// element returns p's map element: the key, and with data the container's
// address and port and the comment that tags it.
func element(p Port, data bool) nftables.SetElement {
	key := word(protocols[p.Proto])
	if !p.HostIP.IsUnspecified() {
		key = append(key, p.HostIP.AsSlice()...)
	}
	key = append(key, word(binaryutil.BigEndian.PutUint16(p.HostPort)...)...)
	e := nftables.SetElement{Key: key}
	if data {
		e.Val = append(p.ContainerIP.AsSlice(), word(binaryutil.BigEndian.PutUint16(p.ContainerPort)...)...)
		e.Comment = portTag(p)
	}
	return e
}

// portTag returns the comment of p's element: "cnm:<network id> <bridge>".
// Neither contains a space.
func portTag(p Port) string { return tagPrefix + p.NetworkID + " " + p.Bridge }

// portFromElement decodes an element of map m. The network and bridge are
// empty if the element has no tag of ours.
func portFromElement(m portMap, e nftables.SetElement) (Port, bool) {
	addrLen := 4
	if m.v6 {
		addrLen = 16
	}
	keyLen := 8
	if !m.any {
		keyLen += addrLen
	}
	if len(e.Key) != keyLen || len(e.Val) != addrLen+4 {
		return Port{}, false
	}
	p := Port{Proto: protoName(e.Key[0])}
	if m.any {
		p.HostIP = netip.IPv4Unspecified()
		if m.v6 {
			p.HostIP = netip.IPv6Unspecified()
		}
	} else {
		p.HostIP, _ = netip.AddrFromSlice(e.Key[4 : 4+addrLen])
	}
	p.HostPort = binaryutil.BigEndian.Uint16(e.Key[keyLen-4:])
	p.ContainerIP, _ = netip.AddrFromSlice(e.Val[:addrLen])
	p.ContainerPort = binaryutil.BigEndian.Uint16(e.Val[addrLen:])
	if rest, ok := strings.CutPrefix(e.Comment, tagPrefix); ok {
		p.NetworkID, p.Bridge, _ = strings.Cut(rest, " ")
	}
	return p, true
}

// byMap groups the elements of ports by map (indexed as f.maps).
func byMap(ports []Port, data bool) [][]nftables.SetElement {
	elems := make([][]nftables.SetElement, numPortMaps)
	for _, p := range ports {
		i := mapIndex(p)
		elems[i] = append(elems[i], element(p, data))
	}
	return elems
}

// elementsPerMessage bounds the elements of one netlink message: they are
// nested in one attribute, whose length field has 16 bits. An element
// takes at most about 160 bytes (IPv6 key and data, a 64-character network
// ID and a 15-character bridge in its comment).
const elementsPerMessage = 256

// addElements queues the addition of elems (indexed as f.maps) to batch c.
func (f *Firewall) addElements(c *nftables.Conn, elems [][]nftables.SetElement) error {
	return f.eachChunk(elems, c.SetAddElements)
}

// deleteElements queues the deletion of elems (indexed as f.maps) to batch c.
func (f *Firewall) deleteElements(c *nftables.Conn, elems [][]nftables.SetElement) error {
	return f.eachChunk(elems, c.SetDeleteElements)
}

func (f *Firewall) eachChunk(elems [][]nftables.SetElement, do func(*nftables.Set, []nftables.SetElement) error) error {
	for i, es := range elems {
		for chunk := range slices.Chunk(es, elementsPerMessage) {
			if err := do(f.maps[i].set, chunk); err != nil {
				return err
			}
		}
	}
	return nil
}

// portElementsLocked lists the elements of every DNAT map (indexed as
// f.maps). A map that does not exist (a table made by a version before
// published ports, or a table that is gone) has none.
func (f *Firewall) portElementsLocked() ([][]nftables.SetElement, error) {
	c, err := f.connLocked()
	if err != nil {
		return nil, err
	}
	elems := make([][]nftables.SetElement, len(f.maps))
	sets, err := c.GetSets(f.table)
	if err != nil {
		// The kernel refuses to list the sets of a missing table, and
		// google/nftables keeps no errno in the error: a listing of the
		// tables tells whether that was the cause.
		f.dropConnLocked()
		if gone, lerr := f.tableGoneLocked(); lerr == nil && gone {
			return elems, nil
		}
		return nil, fmt.Errorf("list maps of table inet %s: %w", f.name, err)
	}
	for i, m := range f.maps {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == m.set.Name }) {
			continue
		}
		elems[i], err = c.GetSetElements(m.set)
		if err != nil {
			f.dropConnLocked()
			return nil, fmt.Errorf("list map inet %s %s: %w", f.name, m.set.Name, err)
		}
	}
	return elems, nil
}

// tableGoneLocked reports whether the namespace has no table of ours.
func (f *Firewall) tableGoneLocked() (bool, error) {
	c, err := f.connLocked()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		f.dropConnLocked()
		return false, err
	}
	return !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == f.name }), nil
}

// portsLocked returns the published ports, sorted by protocol, host address
// and host port.
func (f *Firewall) portsLocked() ([]Port, error) {
	elems, err := f.portElementsLocked()
	if err != nil {
		return nil, err
	}
	var ports []Port
	for i, es := range elems {
		for _, e := range es {
			if p, ok := portFromElement(f.maps[i], e); ok {
				ports = append(ports, p)
			}
		}
	}
	slices.SortFunc(ports, func(a, b Port) int {
		return cmp.Or(strings.Compare(a.Proto, b.Proto), a.HostIP.Compare(b.HostIP), cmp.Compare(a.HostPort, b.HostPort))
	})
	return ports, nil
}

// taggedPortsLocked returns the elements of network id's ports (indexed as
// f.maps) and how many there are.
func (f *Firewall) taggedPortsLocked(id string) ([][]nftables.SetElement, int, error) {
	elems, err := f.portElementsLocked()
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for i, es := range elems {
		elems[i] = slices.DeleteFunc(es, func(e nftables.SetElement) bool {
			p, ok := portFromElement(f.maps[i], e)
			return !ok || p.NetworkID != id
		})
		n += len(elems[i])
	}
	return elems, n, nil
}

// AddPorts publishes ports in one netlink batch: all or nothing. Each port
// becomes one element of a DNAT map, tagged with its network.
//
// A port whose key (Proto, HostIP, HostPort) is published already, to
// another container address or port, fails the batch with an error
// wrapping errdefs.ErrExists that names it. A port published already to
// the same container address and port is left as it is (its network tag
// too). AddPorts does not check that a port on the
// unspecified address and one on a specific address of the same family
// and number do not coexist (the port allocator's job): the specific one
// wins for its address.
//
// Invalid input returns errdefs.ErrInvalid naming the port, field and
// value, before anything is sent; so does a key listed twice. The context
// is checked before the batch is sent.
//
// UDP (and other) flows that the kernel's conntrack already tracks keep
// their old destination: the caller deletes their entries after AddPorts
// (osl.Namespace.DeleteConntrack).
func (f *Firewall) AddPorts(ctx context.Context, ports ...Port) error {
	if err := checkBatch(ports, false); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(ports) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return fmt.Errorf("add ports: %w", err)
	}
	c, err := f.connLocked()
	if err != nil {
		return fmt.Errorf("add ports: %w", err)
	}
	if err := f.addElements(c, byMap(ports, true)); err != nil {
		f.dropConnLocked()
		return fmt.Errorf("add ports: %w", err)
	}
	err = f.flushLocked()
	if errors.Is(err, unix.EEXIST) {
		return f.clashLocked(ports, err)
	}
	if err != nil {
		return fmt.Errorf("add ports: %w", err)
	}
	return nil
}

// clashLocked names the port of a failed AddPorts batch whose key is
// published already to somewhere else. cause is the kernel's error.
func (f *Firewall) clashLocked(ports []Port, cause error) error {
	have, err := f.portsLocked()
	if err != nil {
		return fmt.Errorf("%w: add ports: a host port is published already (%w); list ports: %w", errdefs.ErrExists, cause, err)
	}
	byKey := make(map[portKey]Port, len(have))
	for _, h := range have {
		byKey[h.key()] = h
	}
	for _, p := range ports {
		if h, ok := byKey[p.key()]; ok {
			return fmt.Errorf("%w: add port %s: host port %s %s is published already, to %s (network %s)",
				errdefs.ErrExists, p, p.Proto, netip.AddrPortFrom(p.HostIP, p.HostPort),
				netip.AddrPortFrom(h.ContainerIP, h.ContainerPort), h.NetworkID)
		}
	}
	return fmt.Errorf("%w: add ports: a host port is published already: %w", errdefs.ErrExists, cause)
}

// RemovePorts withdraws ports in one netlink batch. A port is found by its
// key (Proto, HostIP, HostPort) alone, so any port that [Firewall.Ports]
// returned can be removed; the other fields are not compared. Removing a
// port that is not published is not an error (idempotent). An invalid key
// returns errdefs.ErrInvalid. After Delete it does nothing.
//
// As with AddPorts, conntrack entries of flows through the ports outlive
// them until the caller deletes them.
func (f *Firewall) RemovePorts(ctx context.Context, ports ...Port) error {
	if err := checkBatch(ports, true); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("remove ports: %w", f.usableLocked())
	}
	if f.deleted {
		return nil
	}
	if err := f.removePortsLocked(ports); err != nil {
		return fmt.Errorf("remove ports: %w", err)
	}
	return nil
}

// removePortsLocked deletes the elements of ports. The kernel fails a whole
// batch that deletes a missing element (ENOENT); then it lists what is
// there and deletes only that. The first try needs no listing, so removing
// a port costs the same however many are published.
func (f *Firewall) removePortsLocked(ports []Port) error {
	want := make(map[portKey]Port, len(ports))
	for _, p := range ports {
		want[p.key()] = p
	}
	const attempts = 3
	var err error
	for range attempts {
		if len(want) == 0 {
			return nil
		}
		var c *nftables.Conn
		c, err = f.connLocked()
		if err != nil {
			return err
		}
		if err = f.deleteElements(c, byMap(slices.Collect(maps.Values(want)), false)); err != nil {
			f.dropConnLocked()
			return err
		}
		err = f.flushLocked()
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
		have, lerr := f.portsLocked()
		if lerr != nil {
			return errors.Join(err, lerr)
		}
		present := make(map[portKey]bool, len(have))
		for _, h := range have {
			present[h.key()] = true
		}
		for k := range want {
			if !present[k] {
				delete(want, k)
			}
		}
	}
	return err
}

// Ports returns the published ports as the kernel holds them, sorted by
// protocol, host address and host port: what a restarted controller
// compares with its records. A port whose element carries no tag of ours
// has an empty NetworkID and Bridge.
func (f *Firewall) Ports(ctx context.Context) ([]Port, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	ports, err := f.portsLocked()
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	return ports, nil
}

// SetPorts makes the published ports exactly ports, in one netlink batch:
// it empties the DNAT maps and adds ports, and the kernel applies both at
// once, so no packet sees the maps in between. A restored controller calls
// it with the ports of the endpoints it restored. Invalid input returns
// errdefs.ErrInvalid, as for AddPorts; on any error nothing changed.
func (f *Firewall) SetPorts(ctx context.Context, ports ...Port) error {
	if err := checkBatch(ports, false); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return fmt.Errorf("set ports: %w", err)
	}
	c, err := f.connLocked()
	if err != nil {
		return fmt.Errorf("set ports: %w", err)
	}
	for _, m := range f.maps {
		c.FlushSet(m.set)
	}
	if err := f.addElements(c, byMap(ports, true)); err != nil {
		f.dropConnLocked()
		return fmt.Errorf("set ports: %w", err)
	}
	if err := f.flushLocked(); err != nil {
		return fmt.Errorf("set ports: %w", err)
	}
	return nil
}
