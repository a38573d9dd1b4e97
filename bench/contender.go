//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/seed53641549/cnm/osl"
)

// contender is one way of giving a container its network.
type contender interface {
	name() string
	// setup gives container i its network: namespace, interface, address,
	// default route. It is what is timed.
	setup(ctx context.Context, i int) (*box, error)
	// close removes the contender's network (its bridge).
	close(ctx context.Context) error
}

// box is one container made by a contender.
type box struct {
	key  string       // the namespace file
	addr netip.Prefix // the container's address
	// teardown removes the whole container. The kernel may remove the host
	// end of its veth later; the harness waits for that.
	teardown func(ctx context.Context) error
	// leave detaches the container's interface from a living namespace
	// (one link deletion); nil if the contender has no such operation.
	leave func(ctx context.Context) error
	// afterLeave removes what a leave left of the container, in the order a
	// runtime stopping it goes: cnm deletes the endpoint, then the sandbox;
	// the floor drops the namespace. nil if leave is.
	afterLeave func(ctx context.Context) error
	// leaveOnHost is leave done through the host namespace's one netlink
	// socket instead of one of the container's own; nil if the contender has
	// no such variant. A diagnostic of the workers phase (see
	// config.workersHostSocket).
	leaveOnHost func(ctx context.Context) error
}

// sandboxer is a contender that can also make a container's namespace
// alone, with no interface in it: cnm's NewSandbox, the floor's unshare and
// bind mount.
type sandboxer interface {
	// sandbox makes namespace number i and returns the function that
	// removes it again. It is what is timed.
	sandbox(ctx context.Context, i int) (remove func(ctx context.Context) error, err error)
}

// hostEnd returns the interface index of the host end of the veth whose peer
// is eth0 in the namespace file key. It is looked up outside any timed
// section. The harness follows the host end by index, not by name: a
// contender may rename a link it is done with before it deletes it.
func hostEnd(ctx context.Context, host *osl.Namespace, key string) (int, error) {
	ns, err := osl.OpenNamespace(ctx, key)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	l, err := ns.LinkByName(ctx, "eth0")
	if err != nil {
		return 0, err
	}
	if _, err := host.LinkByIndex(ctx, l.PeerIndex); err != nil {
		return 0, err
	}
	return l.PeerIndex, nil
}

// waitGone polls until none of the links with the given indexes exist in
// host any more. The kernel does not reuse an index while counting up to
// 2^31 links.
func waitGone(ctx context.Context, host *osl.Namespace, indexes []int) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, i := range indexes {
		for {
			_, err := host.LinkByIndex(ctx, i)
			if err != nil {
				break // gone (or unreadable: stop waiting either way)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("link %d still exists after 60 s", i)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	return nil
}
