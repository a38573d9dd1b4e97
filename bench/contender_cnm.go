//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/seed53641549/cnm"
)

// cnmContender sets containers up through cnm's public API.
type cnmContender struct {
	ctrl *cnm.Controller
	nw   *cnm.Network
}

func newCNM(ctx context.Context, ctrl *cnm.Controller, name, bridge string, subnet netip.Prefix) (*cnmContender, error) {
	nw, err := ctrl.NewNetwork(ctx, "bridge", name, cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": bridge}))
	if err != nil {
		return nil, err
	}
	return &cnmContender{ctrl: ctrl, nw: nw}, nil
}

func (c *cnmContender) name() string { return "cnm" }

func (c *cnmContender) setup(ctx context.Context, i int) (*box, error) {
	id := fmt.Sprintf("%s-%d", c.nw.Name(), i)
	sb, err := c.ctrl.NewSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	ep, err := c.nw.CreateEndpoint(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := ep.Join(ctx, sb); err != nil {
		return nil, err
	}
	return &box{
		key:  sb.Key(),
		addr: ep.Info().IPv4,
		teardown: func(ctx context.Context) error {
			if err := sb.Delete(ctx); err != nil {
				return err
			}
			// After a Leave the endpoint is no longer the sandbox's to delete.
			if err := ep.Delete(ctx); err != nil && !errors.Is(err, cnm.ErrNotFound) {
				return err
			}
			return nil
		},
		leave: func(ctx context.Context) error { return ep.Leave(ctx, sb) },
		afterLeave: func(ctx context.Context) error {
			if err := ep.Delete(ctx); err != nil {
				return err
			}
			return sb.Delete(ctx)
		},
	}, nil
}

// sandbox makes a sandbox alone: NewSandbox, with no endpoint.
func (c *cnmContender) sandbox(ctx context.Context, i int) (func(context.Context) error, error) {
	sb, err := c.ctrl.NewSandbox(ctx, fmt.Sprintf("%s-%d", c.nw.Name(), i))
	if err != nil {
		return nil, err
	}
	return sb.Delete, nil
}

func (c *cnmContender) close(ctx context.Context) error { return c.nw.Delete(ctx) }
