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
}

// hostEnd returns the name of the host end of the veth whose peer is eth0 in
// the namespace file key. It is looked up outside any timed section.
func hostEnd(ctx context.Context, host *osl.Namespace, key string) (string, error) {
	ns, err := osl.OpenNamespace(ctx, key)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	l, err := ns.LinkByName(ctx, "eth0")
	if err != nil {
		return "", err
	}
	h, err := host.LinkByIndex(ctx, l.PeerIndex)
	if err != nil {
		return "", err
	}
	return h.Name, nil
}

// waitGone polls until none of the links named exist in host any more.
func waitGone(ctx context.Context, host *osl.Namespace, names []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range names {
		for {
			_, err := host.LinkByName(ctx, n)
			if err != nil {
				break // gone (or unreadable: stop waiting either way)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("link %s still exists after 60 s", n)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	return nil
}
