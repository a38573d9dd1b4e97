//go:build !linux

package osl

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/seed53641549/cnm/errdefs"
)

// errNotSupported is what every function and method returns off Linux.
var errNotSupported = fmt.Errorf("cnm needs Linux: network namespaces do not exist on %s: %w", runtime.GOOS, errdefs.ErrNotSupported)

// Namespace is one network namespace. Network namespaces exist on Linux only:
// on this system no Namespace can be made or opened, and every method
// returns an error wrapping [errdefs.ErrNotSupported]. The Linux build
// documents each function and method.
type Namespace struct {
	path string
}

func NewNamespace(ctx context.Context, path string) (*Namespace, error) {
	return nil, errNotSupported
}

func OpenNamespace(ctx context.Context, path string) (*Namespace, error) {
	return nil, errNotSupported
}

func ReopenNamespace(ctx context.Context, path string) (*Namespace, error) {
	return nil, errNotSupported
}

func RemoveNamespaceFile(path string) error { return errNotSupported }

func (ns *Namespace) ID() ID                             { return ID{} }
func (ns *Namespace) Path() string                       { return ns.path }
func (ns *Namespace) String() string                     { return ns.path }
func (ns *Namespace) Do(fn func() error) error           { return errNotSupported }
func (ns *Namespace) Close() error                       { return nil }
func (ns *Namespace) Delete() error                      { return errNotSupported }
func (ns *Namespace) RemoveFile() error                  { return errNotSupported }
func (ns *Namespace) FD() (int, error)                   { return -1, errNotSupported }
func (ns *Namespace) Inode() (uint64, error)             { return 0, errNotSupported }
func (ns *Namespace) SetSysctl(name, value string) error { return errNotSupported }
func (ns *Namespace) Sysctl(name string) (string, error) { return "", errNotSupported }

func (ns *Namespace) Sysctls(pattern string) (map[string]string, error) {
	return nil, errNotSupported
}

func (ns *Namespace) LinkByName(ctx context.Context, name string) (Link, error) {
	return Link{}, errNotSupported
}

func (ns *Namespace) LinkByIndex(ctx context.Context, index int) (Link, error) {
	return Link{}, errNotSupported
}

func (ns *Namespace) Links(ctx context.Context) ([]Link, error) { return nil, errNotSupported }

func (ns *Namespace) AddBridge(ctx context.Context, spec BridgeSpec) (int, error) {
	return 0, errNotSupported
}

func (ns *Namespace) AddVeth(ctx context.Context, spec VethSpec) error { return errNotSupported }

func (ns *Namespace) DeleteLink(ctx context.Context, name string) error { return errNotSupported }

func (ns *Namespace) DeleteLinkIndex(ctx context.Context, index int, name string) error {
	return errNotSupported
}

func (ns *Namespace) RetireLink(ctx context.Context, index int, newName string) error {
	return errNotSupported
}

func (ns *Namespace) SetLinkUp(ctx context.Context, index int) error { return errNotSupported }
func (ns *Namespace) SetLinkDown(ctx context.Context, index int) error {
	return errNotSupported
}

func (ns *Namespace) MoveLink(ctx context.Context, name string, to *Namespace, newName string) error {
	return errNotSupported
}

func (ns *Namespace) SetBridgePortIsolated(ctx context.Context, name string, isolated bool) error {
	return errNotSupported
}

func (ns *Namespace) SetBridgePortHairpin(ctx context.Context, name string, on bool) error {
	return errNotSupported
}

func (ns *Namespace) LinkUp(ctx context.Context, index int, linkLocal bool) error {
	return errNotSupported
}

func (ns *Namespace) SetLinkMTU(ctx context.Context, index, mtu int) error { return errNotSupported }

func (ns *Namespace) SetLinkMaster(ctx context.Context, index, masterIndex int) error {
	return errNotSupported
}

func (ns *Namespace) SetNoLinkLocal(ctx context.Context, index int) error { return errNotSupported }

func (ns *Namespace) SetLinkAlias(ctx context.Context, index int, alias string) error {
	return errNotSupported
}

func (ns *Namespace) AddMacvlan(ctx context.Context, spec MacvlanSpec) error { return errNotSupported }

func (ns *Namespace) AddIPvlan(ctx context.Context, spec IPvlanSpec) error { return errNotSupported }

func (ns *Namespace) AddVXLAN(ctx context.Context, spec VXLANSpec) error { return errNotSupported }

func (ns *Namespace) AddVLAN(ctx context.Context, spec VLANSpec) (int, error) {
	return 0, errNotSupported
}

func (ns *Namespace) AddAddress(ctx context.Context, index int, addr netip.Prefix) error {
	return errNotSupported
}

func (ns *Namespace) DeleteAddress(ctx context.Context, index int, addr netip.Prefix) error {
	return errNotSupported
}

func (ns *Namespace) Addresses(ctx context.Context, index int) ([]netip.Prefix, error) {
	return nil, errNotSupported
}

func (ns *Namespace) SetNeighbour(ctx context.Context, n Neighbour) error { return errNotSupported }

func (ns *Namespace) DeleteNeighbour(ctx context.Context, n Neighbour) error {
	return errNotSupported
}

func (ns *Namespace) Neighbours(ctx context.Context, index int) ([]Neighbour, error) {
	return nil, errNotSupported
}

func (ns *Namespace) AddRoute(ctx context.Context, r Route) error     { return errNotSupported }
func (ns *Namespace) ReplaceRoute(ctx context.Context, r Route) error { return errNotSupported }
func (ns *Namespace) DeleteRoute(ctx context.Context, r Route) error  { return errNotSupported }

func (ns *Namespace) Routes(ctx context.Context, family int) ([]Route, error) {
	return nil, errNotSupported
}

// SetFDB needs Linux.
func (ns *Namespace) SetFDB(ctx context.Context, e FDBEntry) error { return errNotSupported }

// DeleteFDB needs Linux.
func (ns *Namespace) DeleteFDB(ctx context.Context, e FDBEntry) error { return errNotSupported }

// FDB needs Linux.
func (ns *Namespace) FDB(ctx context.Context, index int) ([]FDBEntry, error) {
	return nil, errNotSupported
}
