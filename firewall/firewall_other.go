//go:build !linux

package firewall

import (
	"context"
	"fmt"
	"runtime"

	"github.com/seed53641549/cnm/errdefs"
)

// errNotSupported is what every function and method returns off Linux.
var errNotSupported = fmt.Errorf("cnm needs Linux: nftables does not exist on %s: %w", runtime.GOOS, errdefs.ErrNotSupported)

// Firewall programs one controller's nftables table in one network namespace.
// nftables exists on Linux only: on this system no Firewall can be made, and
// every method returns an error wrapping [errdefs.ErrNotSupported]. The Linux
// build documents each function and method.
type Firewall struct{}

func New(ctx context.Context, nsFD int, name string) (*Firewall, error) {
	return nil, errNotSupported
}

func CountRules(ctx context.Context, nsFD int, name string) (int, error) {
	return 0, errNotSupported
}

func (f *Firewall) Close() error                                       { return nil }
func (f *Firewall) Delete(ctx context.Context) error                   { return errNotSupported }
func (f *Firewall) RuleCount(ctx context.Context) (int, error)         { return 0, errNotSupported }
func (f *Firewall) AddNetwork(ctx context.Context, n Network) error    { return errNotSupported }
func (f *Firewall) RemoveNetwork(ctx context.Context, id string) error { return errNotSupported }
func (f *Firewall) NetworkIDs(ctx context.Context) ([]string, error)   { return nil, errNotSupported }

func (f *Firewall) AddPorts(ctx context.Context, ports ...Port) error    { return errNotSupported }
func (f *Firewall) RemovePorts(ctx context.Context, ports ...Port) error { return errNotSupported }
func (f *Firewall) Ports(ctx context.Context) ([]Port, error)            { return nil, errNotSupported }
func (f *Firewall) SetPorts(ctx context.Context, ports ...Port) error    { return errNotSupported }

// Services programs the services table of one client namespace (Linux only).
type Services struct{}

func NewServices(nsFD int, name string) (*Services, error)        { return nil, errNotSupported }
func (s *Services) Set(ctx context.Context, svcs []Service) error { return errNotSupported }
func (s *Services) Close() error                                  { return nil }

func (f *Firewall) Name() string              { return "" }
func (f *Firewall) OwnsPortID(id uint32) bool { return false }
func (f *Firewall) Rebuild(ctx context.Context, networks []Network, ports []Port) error {
	return errNotSupported
}
