package driverapi_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/null"
)

func TestRegistry(t *testing.T) {
	var r driverapi.Registry
	_, err := r.Driver("null")
	require.ErrorIs(t, err, driverapi.ErrNotFound)

	require.NoError(t, null.Register(&r))
	d, err := r.Driver("null")
	require.NoError(t, err)
	assert.Equal(t, "null", d.Type())

	err = null.Register(&r)
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.ErrorContains(t, err, `"null"`)
	require.ErrorIs(t, r.RegisterDriver("", d), driverapi.ErrInvalid)
	require.ErrorIs(t, r.RegisterDriver("x", nil), driverapi.ErrInvalid)
	require.NoError(t, r.RegisterDriver("another", d))
	assert.Equal(t, []string{"another", "null"}, r.Names())

	_, err = r.Driver("overlay")
	assert.ErrorContains(t, err, "registered: [another null]")
}

func TestRegistryResolver(t *testing.T) {
	var r driverapi.Registry
	require.NoError(t, null.Register(&r))
	var asked atomic.Int32
	boom := errors.New("plugin refused the handshake")
	r.SetResolver(func(name string) (driverapi.Driver, error) {
		asked.Add(1)
		switch name {
		case "plug":
			return null.NewNoInterface("plug"), nil
		case "broken":
			return nil, boom
		case "badscope":
			return badScope{}, nil
		}
		return nil, fmt.Errorf("%w: no plugin %q", driverapi.ErrNotFound, name)
	})

	// Resolved once, then registered: concurrent lookups agree.
	var wg sync.WaitGroup
	got := make([]driverapi.Driver, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := r.Driver("plug")
			assert.NoError(t, err)
			got[i] = d
		}()
	}
	wg.Wait()
	for _, d := range got {
		assert.Same(t, got[0], d)
	}
	before := asked.Load()
	_, err := r.Driver("plug")
	require.NoError(t, err)
	assert.Equal(t, before, asked.Load(), "a registered name is not resolved again")
	assert.Equal(t, []string{"null", "plug"}, r.Names())

	_, err = r.Driver("broken")
	require.ErrorIs(t, err, boom)
	_, err = r.Driver("nosuch")
	require.ErrorIs(t, err, driverapi.ErrNotFound)
	assert.ErrorContains(t, err, `driver "nosuch" (registered: [null plug]): not found: no plugin "nosuch"`)
	_, err = r.Driver("badscope")
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Equal(t, []string{"null", "plug"}, r.Names(), "failures register nothing")

	r.SetResolver(nil)
	_, err = r.Driver("other")
	require.ErrorIs(t, err, driverapi.ErrNotFound)
}

// badScope is a driver with no scope, which the registry refuses.
type badScope struct{ driverapi.Driver }

func (badScope) Capability() driverapi.Capability { return driverapi.Capability{} }
