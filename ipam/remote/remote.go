// Package remote is cnm's client of Docker's IPAM plugin protocol: an
// [ipam.Allocator] whose every call goes to a plugin (/IpamDriver.*), so a
// network's pools and addresses come from a separate process written for
// Docker.
//
// What the protocol cannot say: [ipam.PoolRequest.Size] ("any /24") is
// refused with errdefs.ErrNotSupported; [ipam.PoolRequest.Avoid] is not
// sent (the plugin chooses its pools itself). The plugin's errors are text,
// so "no such pool" from a plugin wraps plugin.ErrPlugin, not
// errdefs.ErrNotFound. cnm's controller asks for its networks' pools and
// addresses again when it restarts, as Docker does for plugins that report
// RequiresRequestReplay: a plugin that keeps its state across restarts must
// accept those repeated requests.
//
// Every answer is checked before it is used: a pool must be a masked prefix
// of the family asked for (the subnet asked for, if any), an address must
// lie in its pool (the one asked for, if any). An answer that fails is an
// error naming the field and the value, and what the plugin reserved is
// released again.
package remote

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// Docker's default address space names, reported until the plugin has
// answered GetDefaultAddressSpaces.
const (
	DefaultLocalSpace  = "LocalDefault"
	DefaultGlobalSpace = "GlobalDefault"
)

// Allocator is an IPAM driver served by a plugin. It is safe for concurrent
// use.
type Allocator struct {
	client *plugin.Client

	// mu guards the fields below.
	mu            sync.Mutex
	activated     bool
	local, global string
	pools         map[string]netip.Prefix // by pool ID, as the plugin answered
}

var _ ipam.Allocator = (*Allocator)(nil)

// New returns an allocator that calls the plugin through client. It does not
// contact the plugin: [Allocator.Activate] does, and every call activates
// first if needed. A nil client is an error wrapping errdefs.ErrInvalid.
func New(client *plugin.Client) (*Allocator, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: remote ipam: a client is required", errdefs.ErrInvalid)
	}
	return &Allocator{client: client, local: DefaultLocalSpace, global: DefaultGlobalSpace, pools: map[string]netip.Prefix{}}, nil
}

// Name returns the plugin's name.
func (a *Allocator) Name() string { return a.client.Name() }

// Activate performs the handshake (/Plugin.Activate, which must list
// IpamDriver), then asks for the capabilities and the default address
// spaces, once: after a success it returns at once.
func (a *Allocator) Activate(ctx context.Context) error {
	a.mu.Lock()
	done := a.activated
	a.mu.Unlock()
	if done {
		return nil
	}
	if _, err := a.client.Activate(ctx, protocol.IpamDriver); err != nil {
		return err
	}
	var caps protocol.IpamCapabilitiesResponse
	if err := a.client.Call(ctx, protocol.PathIpamGetCapabilities, nil, &caps); err != nil {
		return err
	}
	var spaces protocol.AddressSpacesResponse
	if err := a.client.Call(ctx, protocol.PathGetDefaultAddressSpaces, nil, &spaces); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.activated = true
	if spaces.LocalDefaultAddressSpace != "" {
		a.local = spaces.LocalDefaultAddressSpace
	}
	if spaces.GlobalDefaultAddressSpace != "" {
		a.global = spaces.GlobalDefaultAddressSpace
	}
	return nil
}

// KeepsState reports true: the plugin keeps its own pools and addresses
// across a restart of the controller (see [ipam.StateKeeper]).
func (a *Allocator) KeepsState() bool { return true }

// AddressSpaces returns the plugin's address spaces (see Activate).
func (a *Allocator) AddressSpaces() (local, global string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.local, a.global
}

func (a *Allocator) call(ctx context.Context, path string, req, resp any) error {
	if err := a.Activate(ctx); err != nil {
		return err
	}
	return a.client.Call(ctx, path, req, resp)
}

func (a *Allocator) refuse(path string, err error) error {
	return &plugin.CallError{Plugin: a.Name(), Call: strings.TrimPrefix(path, "/"), Err: err}
}

// RequestPool sends /IpamDriver.RequestPool. ipam.LocalSpace and
// ipam.GlobalSpace (and "") are sent as the plugin's default spaces; other
// names as they are.
func (a *Allocator) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	if req.Size != 0 {
		return ipam.Pool{}, fmt.Errorf("%w: ipam plugin %q: PoolRequest.Size %d: the plugin protocol asks for a subnet or for any",
			errdefs.ErrNotSupported, a.Name(), req.Size)
	}
	if req.Subnet.IsValid() && (req.Subnet.Masked() != req.Subnet || req.Subnet.Addr().Is6() != req.V6) {
		return ipam.Pool{}, fmt.Errorf("%w: subnet %s: want a masked prefix of the family asked for", errdefs.ErrInvalid, req.Subnet)
	}
	if err := a.Activate(ctx); err != nil {
		return ipam.Pool{}, err
	}
	local, global := a.AddressSpaces()
	preq := protocol.RequestPoolRequest{AddressSpace: req.AddressSpace, V6: req.V6, Options: map[string]string{}}
	switch req.AddressSpace {
	case "", ipam.LocalSpace:
		preq.AddressSpace = local
	case ipam.GlobalSpace:
		preq.AddressSpace = global
	}
	if req.Subnet.IsValid() {
		preq.Pool = req.Subnet.String()
	}
	if req.IPRange.IsValid() {
		preq.SubPool = req.IPRange.String()
	}
	var resp protocol.RequestPoolResponse
	if err := a.client.Call(ctx, protocol.PathRequestPool, preq, &resp); err != nil {
		return ipam.Pool{}, err
	}
	subnet, err := checkPool(req, resp)
	if err != nil {
		err = a.refuse(protocol.PathRequestPool, err)
		if resp.PoolID != "" {
			if rerr := a.client.Call(context.WithoutCancel(ctx), protocol.PathReleasePool, protocol.ReleasePoolRequest{PoolID: resp.PoolID}, &protocol.ErrorResponse{}); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
		}
		return ipam.Pool{}, err
	}
	a.mu.Lock()
	a.pools[resp.PoolID] = subnet
	a.mu.Unlock()
	return ipam.Pool{ID: resp.PoolID, Subnet: subnet, IPRange: req.IPRange}, nil
}

// checkPool checks a RequestPool answer against the request.
func checkPool(req ipam.PoolRequest, resp protocol.RequestPoolResponse) (netip.Prefix, error) {
	if resp.PoolID == "" {
		return netip.Prefix{}, fmt.Errorf("%w: PoolID is empty", plugin.ErrProtocol)
	}
	p, err := netip.ParsePrefix(resp.Pool)
	switch {
	case err != nil:
		return p, fmt.Errorf("%w: Pool %q: %w", plugin.ErrProtocol, resp.Pool, err)
	case p.Masked() != p:
		return p, fmt.Errorf("%w: Pool %q has host bits set", plugin.ErrProtocol, resp.Pool)
	case p.Addr().Is6() != req.V6:
		return p, fmt.Errorf("%w: Pool %q is of the wrong family (V6 %v)", plugin.ErrProtocol, resp.Pool, req.V6)
	case req.Subnet.IsValid() && p != req.Subnet:
		return p, fmt.Errorf("%w: Pool %q, but %s was asked for", plugin.ErrProtocol, resp.Pool, req.Subnet)
	case req.IPRange.IsValid() && !(p.Contains(req.IPRange.Addr()) && p.Bits() <= req.IPRange.Bits()):
		return p, fmt.Errorf("%w: Pool %q does not hold the range %s", plugin.ErrProtocol, resp.Pool, req.IPRange)
	}
	return p, nil
}

// ReleasePool sends /IpamDriver.ReleasePool.
func (a *Allocator) ReleasePool(ctx context.Context, poolID string) error {
	if err := a.call(ctx, protocol.PathReleasePool, protocol.ReleasePoolRequest{PoolID: poolID}, &protocol.ErrorResponse{}); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.pools, poolID)
	a.mu.Unlock()
	return nil
}

// RequestAddress sends /IpamDriver.RequestAddress, with req.Preferred if
// set, and checks the answer: an address (with or without prefix length) in
// the pool, and the one asked for.
func (a *Allocator) RequestAddress(ctx context.Context, poolID string, req ipam.AddressRequest) (netip.Addr, error) {
	preq := protocol.RequestAddressRequest{PoolID: poolID, Options: map[string]string{}}
	if req.Preferred.IsValid() {
		preq.Address = req.Preferred.String()
	}
	var resp protocol.RequestAddressResponse
	if err := a.call(ctx, protocol.PathRequestAddress, preq, &resp); err != nil {
		return netip.Addr{}, err
	}
	a.mu.Lock()
	subnet, known := a.pools[poolID]
	a.mu.Unlock()
	addr, err := parseAddress(resp.Address)
	switch {
	case err != nil:
	case known && !subnet.Contains(addr):
		err = fmt.Errorf("%w: Address %q is not in pool %s", plugin.ErrProtocol, resp.Address, subnet)
	case req.Preferred.IsValid() && addr != req.Preferred:
		err = fmt.Errorf("%w: Address %q, but %s was asked for", plugin.ErrProtocol, resp.Address, req.Preferred)
	}
	if err != nil {
		err = a.refuse(protocol.PathRequestAddress, err)
		if addr.IsValid() {
			if rerr := a.ReleaseAddress(context.WithoutCancel(ctx), poolID, addr); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
		}
		return netip.Addr{}, err
	}
	return addr, nil
}

// parseAddress reads "10.0.0.2/24" or "10.0.0.2".
func parseAddress(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: Address %q: want an address", plugin.ErrProtocol, s)
	}
	return a, nil
}

// ReleaseAddress sends /IpamDriver.ReleaseAddress.
func (a *Allocator) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	return a.call(ctx, protocol.PathReleaseAddress, protocol.ReleaseAddressRequest{PoolID: poolID, Address: addr.String()}, &protocol.ErrorResponse{})
}
