package driverapi_test

import (
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
