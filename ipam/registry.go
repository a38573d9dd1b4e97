package ipam

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
)

// Names of the built-in IPAM drivers, as a network names them
// (cnm.WithIPAMDriver).
const (
	// DefaultDriver is the [LocalAllocator] of the controller.
	DefaultDriver = "default"
	// NullDriver is the [NullAllocator]: no addresses at all.
	NullDriver = "null"
)

// Registry holds the allocators (IPAM drivers) of one controller by name. It
// is safe for concurrent use; the zero value is empty and ready to use.
type Registry struct {
	mu         sync.RWMutex // guards allocators and resolve
	allocators map[string]Allocator
	resolve    func(name string) (Allocator, error)
}

// SetResolver makes [Registry.Allocator] ask fn for names that are not
// registered (plugins), and register what it returns. fn returns an error
// wrapping errdefs.ErrNotFound when it knows no such driver. nil: ask
// nothing.
func (r *Registry) SetResolver(fn func(name string) (Allocator, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resolve = fn
}

// RegisterAllocator adds a under name. A name that is taken is an error
// wrapping errdefs.ErrExists; an empty name or a nil allocator one wrapping
// errdefs.ErrInvalid. Nothing is registered on error.
func (r *Registry) RegisterAllocator(name string, a Allocator) error {
	if name == "" || a == nil {
		return fmt.Errorf("%w: register ipam driver %q: name and allocator are required", errdefs.ErrInvalid, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.allocators[name]; ok {
		return fmt.Errorf("%w: ipam driver %q is already registered", errdefs.ErrExists, name)
	}
	if r.allocators == nil {
		r.allocators = map[string]Allocator{}
	}
	r.allocators[name] = a
	return nil
}

// Allocator returns the allocator registered under name, or an error
// wrapping errdefs.ErrNotFound that lists the registered names.
func (r *Registry) Allocator(name string) (Allocator, error) {
	r.mu.RLock()
	a, ok := r.allocators[name]
	resolve := r.resolve
	r.mu.RUnlock()
	if !ok && resolve != nil && name != "" {
		a, err := resolve(name)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return nil, err
		}
		if err == nil {
			if err := r.RegisterAllocator(name, a); errors.Is(err, errdefs.ErrExists) {
				return r.Allocator(name)
			} else if err != nil {
				return nil, err
			}
			return a, nil
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: ipam driver %q (registered: %v)", errdefs.ErrNotFound, name, r.namesLocked())
	}
	return a, nil
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	names := make([]string, 0, len(r.allocators))
	for n := range r.allocators {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// RegisterBuiltins registers def as [DefaultDriver] and a [NullAllocator] as
// [NullDriver]. It stops at the first error (a name already taken).
func RegisterBuiltins(r *Registry, def Allocator) error {
	if err := r.RegisterAllocator(DefaultDriver, def); err != nil {
		return err
	}
	return r.RegisterAllocator(NullDriver, NullAllocator{})
}
