package cnm

import (
	"context"
	"sync"
	"time"
)

// EventType says what an [Event] reports.
type EventType string

// The event types.
const (
	EventNetworkCreated  EventType = "network-created"
	EventNetworkDeleted  EventType = "network-deleted"
	EventEndpointCreated EventType = "endpoint-created"
	EventEndpointDeleted EventType = "endpoint-deleted"
	EventSandboxCreated  EventType = "sandbox-created"
	EventSandboxDeleted  EventType = "sandbox-deleted"
	EventJoined          EventType = "joined"
	EventLeft            EventType = "left"
	// EventHealed: cnm put back an object of its own that something else
	// deleted or changed (Object and Detail say which and how).
	EventHealed EventType = "healed"
	// EventConflict: something keeps changing an object of cnm's; cnm
	// stopped putting it back (Detail says how to resolve it).
	EventConflict EventType = "conflict"
	// EventHealFailed: cnm could not put back what changed (Detail says
	// why); it retries with backoff.
	EventHealFailed EventType = "heal-failed"
	// EventMissed: this reader fell behind and lost Missed events here.
	EventMissed EventType = "missed"
)

// Event is one thing that happened to a controller's objects.
type Event struct {
	Type EventType
	Time time.Time
	// The IDs of the objects concerned, where they apply.
	NetworkID  string
	EndpointID string
	SandboxID  string
	// Object names a host object healed or in conflict ("table inet
	// cnm-…", "bridge br-…", "link veth…", "sysctl net.ipv4.ip_forward").
	Object string
	// Detail says what was done (healed) or how to resolve a conflict.
	Detail string
	// Missed is the number of events lost, for EventMissed.
	Missed int
}

// EventBuffer is how many events a reader of [Controller.Events] may fall
// behind before it misses some.
const EventBuffer = 256

// Events returns the controller's events from now on, until ctx is done or
// the controller is closed; then the channel is closed. Events of one
// object arrive in the order they happened (all events do: there is one
// order). A reader that falls more than [EventBuffer] events behind gets
// an [EventMissed] event, in place of the events it lost; an operation
// never waits for a reader. Events not yet taken from the channel when the
// controller closes are dropped, with no EventMissed.
func (c *Controller) Events(ctx context.Context) <-chan Event {
	s := &subscriber{notify: make(chan struct{}, 1), out: make(chan Event)}
	c.events.mu.Lock()
	if c.events.closed {
		c.events.mu.Unlock()
		close(s.out)
		return s.out
	}
	if c.events.subs == nil {
		c.events.subs = map[*subscriber]bool{}
	}
	c.events.subs[s] = true
	c.events.mu.Unlock()
	go s.forward(ctx, &c.events)
	return s.out
}

// eventBus hands events to the readers of Events.
type eventBus struct {
	mu     sync.Mutex
	subs   map[*subscriber]bool
	closed bool
	done   chan struct{} // closed by close: stops every forwarder
	once   sync.Once
}

func (b *eventBus) stop() chan struct{} {
	b.once.Do(func() { b.done = make(chan struct{}) })
	return b.done
}

// publish queues e for every reader; it never blocks on one.
func (b *eventBus) publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		s.push(e)
	}
}

// close ends every reader's channel.
func (b *eventBus) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.stop())
	}
}

// subscriber is one reader: a bounded queue drained by its forwarder.
type subscriber struct {
	mu     sync.Mutex
	queue  []Event // at most EventBuffer events, plus one EventMissed at the end
	notify chan struct{}
	out    chan Event
}

// push queues e, or counts it missed when the queue is full.
func (s *subscriber) push(e Event) {
	s.mu.Lock()
	switch n := len(s.queue); {
	case n < EventBuffer:
		s.queue = append(s.queue, e)
	case s.queue[n-1].Type == EventMissed && n > EventBuffer:
		s.queue[n-1].Missed++
	default:
		s.queue = append(s.queue, Event{Type: EventMissed, Time: e.Time, Missed: 1})
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// forward delivers the queue in order until ctx is done or the bus closes.
func (s *subscriber) forward(ctx context.Context, b *eventBus) {
	defer func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
		close(s.out)
	}()
	stop := b.stop()
	for {
		s.mu.Lock()
		var e Event
		ok := len(s.queue) > 0
		if ok {
			e = s.queue[0]
			s.queue = s.queue[1:]
		}
		s.mu.Unlock()
		if !ok {
			select {
			case <-s.notify:
				continue
			case <-ctx.Done():
				return
			case <-stop:
				return
			}
		}
		select {
		case s.out <- e:
		case <-ctx.Done():
			return
		case <-stop:
			return
		}
	}
}

// emit logs a lifecycle event at debug level and publishes it.
func (c *Controller) emit(e Event) {
	e.Time = time.Now()
	attrs := []any{}
	for _, kv := range [][2]string{{"network", e.NetworkID}, {"endpoint", e.EndpointID}, {"sandbox", e.SandboxID}, {"object", e.Object}, {"detail", e.Detail}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	switch e.Type {
	case EventHealed:
		c.log.Info("cnm: healed", attrs...)
	case EventConflict, EventHealFailed:
		c.log.Warn("cnm: "+string(e.Type), attrs...)
	default:
		c.log.Debug("cnm: "+string(e.Type), attrs...)
	}
	c.events.publish(e)
}
