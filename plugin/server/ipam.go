package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/store"
)

func (s *Server) routeIPAM() {
	for path, fn := range map[string]func(context.Context, func(any) error) (any, error){
		protocol.PathIpamGetCapabilities:     s.ipamCapabilities,
		protocol.PathGetDefaultAddressSpaces: s.addressSpaces,
		protocol.PathRequestPool:             s.requestPool,
		protocol.PathReleasePool:             s.releasePool,
		protocol.PathRequestAddress:          s.requestAddress,
		protocol.PathReleaseAddress:          s.releaseAddress,
	} {
		s.mux.HandleFunc(path, s.handle(fn))
	}
}

func (s *Server) ipamCapabilities(context.Context, func(any) error) (any, error) {
	return protocol.IpamCapabilitiesResponse{}, nil
}

func (s *Server) addressSpaces(context.Context, func(any) error) (any, error) {
	local, global := s.cfg.Allocator.AddressSpaces()
	return protocol.AddressSpacesResponse{LocalDefaultAddressSpace: local, GlobalDefaultAddressSpace: global}, nil
}

func (s *Server) requestPool(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.RequestPoolRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	preq := ipam.PoolRequest{AddressSpace: req.AddressSpace, V6: req.V6}
	if req.Pool != "" {
		p, err := netip.ParsePrefix(req.Pool)
		if err != nil {
			return nil, invalid("Pool %q: %v", req.Pool, err)
		}
		preq.Subnet = p
	}
	if req.SubPool != "" {
		p, err := netip.ParsePrefix(req.SubPool)
		if err != nil {
			return nil, invalid("SubPool %q: %v", req.SubPool, err)
		}
		preq.IPRange = p
	}
	pool, err := s.cfg.Allocator.RequestPool(ctx, preq)
	if err != nil {
		return nil, err
	}
	id := newPoolID()
	rec := poolRecord{ID: id, AddressSpace: req.AddressSpace, Subnet: pool.Subnet, IPRange: pool.IPRange, V6: req.V6}
	if err := s.save(ctx, put(prefixPool+id, rec)); err != nil {
		return nil, errors.Join(err, s.cfg.Allocator.ReleasePool(context.WithoutCancel(ctx), pool.ID))
	}
	s.mu.Lock()
	s.pools[id] = &serverPool{allocID: pool.ID, subnet: pool.Subnet}
	s.mu.Unlock()
	return protocol.RequestPoolResponse{PoolID: id, Pool: pool.Subnet.String(), Data: map[string]string{}}, nil
}

// newPoolID returns a fresh pool ID of the server's.
func newPoolID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "cnm-" + hex.EncodeToString(b)
}

// pool returns the pool the daemon calls id.
func (s *Server) pool(id string) (*serverPool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[id]
	if !ok {
		return nil, fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, id)
	}
	return p, nil
}

func (s *Server) releasePool(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.ReleasePoolRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	p, err := s.pool(req.PoolID)
	if err != nil {
		return nil, err
	}
	// The records go first: if they cannot be deleted, the pool is still
	// held, whole. If the allocator then refuses, they are put back. (A
	// server made again requests only the pools its records name, so a
	// crash in between frees the pool.) A record already gone (a failed
	// put-back) is nothing to delete.
	var ops, undo []store.Op
	if s.cfg.Store != nil {
		kvs, err := s.cfg.Store.List(ctx, prefixAddress+req.PoolID+"/")
		if err != nil {
			return nil, fmt.Errorf("read plugin state: %w", err)
		}
		rec, err := s.cfg.Store.Get(ctx, prefixPool+req.PoolID)
		switch {
		case err == nil:
			kvs = append(kvs, rec)
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("read plugin state: %w", err)
		}
		for _, kv := range kvs {
			ops = append(ops, store.Del(kv.Key))
			undo = append(undo, store.Put(kv.Key, kv.Value))
		}
	}
	if err := s.save(ctx, ops...); err != nil {
		return nil, err
	}
	// An allocator that no longer knows the pool (released by a request
	// that raced this one) has nothing to give back: done.
	if err := s.cfg.Allocator.ReleasePool(ctx, p.allocID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		if len(undo) > 0 {
			err = errors.Join(err, s.save(context.WithoutCancel(ctx), undo...))
		}
		return nil, err
	}
	s.mu.Lock()
	delete(s.pools, req.PoolID)
	s.mu.Unlock()
	return nil, nil
}

func (s *Server) requestAddress(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.RequestAddressRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	p, err := s.pool(req.PoolID)
	if err != nil {
		return nil, err
	}
	var areq ipam.AddressRequest
	if req.Address != "" {
		a, err := netip.ParseAddr(req.Address)
		if err != nil {
			return nil, invalid("Address %q: %v", req.Address, err)
		}
		areq.Preferred = a
	}
	a, err := s.cfg.Allocator.RequestAddress(ctx, p.allocID, areq)
	if err != nil {
		return nil, err
	}
	if err := s.save(ctx, store.Put(prefixAddress+req.PoolID+"/"+a.String(), nil)); err != nil {
		return nil, errors.Join(err, s.cfg.Allocator.ReleaseAddress(context.WithoutCancel(ctx), p.allocID, a))
	}
	return protocol.RequestAddressResponse{Address: netip.PrefixFrom(a, p.subnet.Bits()).String(), Data: map[string]string{}}, nil
}

func (s *Server) releaseAddress(ctx context.Context, decode func(any) error) (any, error) {
	var req protocol.ReleaseAddressRequest
	if err := decode(&req); err != nil {
		return nil, err
	}
	a, err := netip.ParseAddr(req.Address)
	if err != nil {
		return nil, invalid("Address %q: %v", req.Address, err)
	}
	p, err := s.pool(req.PoolID)
	if err != nil {
		return nil, err
	}
	// The record goes first, and comes back if the allocator refuses:
	// once released, the address may be another request's at once, so a
	// failed record delete must not follow the release. (A crash in
	// between frees the address: a server made again holds only what its
	// records name.)
	key := prefixAddress + req.PoolID + "/" + a.String()
	var undo []store.Op
	if s.cfg.Store != nil {
		if _, err := s.cfg.Store.Get(ctx, key); err == nil {
			undo = append(undo, store.Put(key, nil))
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("read plugin state: %w", err)
		}
	}
	if err := s.save(ctx, store.Del(key)); err != nil {
		return nil, err
	}
	if err := s.cfg.Allocator.ReleaseAddress(ctx, p.allocID, a); err != nil {
		if len(undo) > 0 {
			err = errors.Join(err, s.save(context.WithoutCancel(ctx), undo...))
		}
		return nil, err
	}
	return nil, nil
}
