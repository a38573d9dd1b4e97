package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/null"
	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/plugin/server"
)

// recording is a driver that records what it is asked, and panics on a
// network called "panic".
type recording struct {
	driverapi.Driver
	nets []driverapi.NetworkRequest
	eps  []driverapi.EndpointRequest
}

func (r *recording) Capability() driverapi.Capability {
	return driverapi.Capability{Scope: driverapi.GlobalScope}
}

func (r *recording) CreateNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	if req.ID == "panic" {
		panic("driver bug")
	}
	r.nets = append(r.nets, req)
	return nil
}

func (r *recording) CreateEndpoint(ctx context.Context, req driverapi.EndpointRequest) error {
	r.eps = append(r.eps, req)
	return nil
}

func (r *recording) DeleteEndpoint(ctx context.Context, nid, eid string) error { return nil }

func newServer(t *testing.T) (*server.Server, *recording) {
	t.Helper()
	alloc, err := ipam.New(ipam.Config{})
	require.NoError(t, err)
	rec := &recording{Driver: null.New()}
	s, err := server.New(context.Background(), server.Config{Driver: rec, Allocator: alloc, HostNS: new(osl.Namespace), MaxRequest: 4096})
	require.NoError(t, err)
	return s, rec
}

func call(t *testing.T, s http.Handler, method, path, body string) (int, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	var out map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &out), "every answer is JSON: %s", w.Body.String())
	assert.Equal(t, protocol.ContentType, w.Header().Get("Content-Type"))
	return w.Code, out
}

func TestServerAnswers(t *testing.T) {
	s, rec := newServer(t)
	code, out := call(t, s, http.MethodPost, protocol.PathActivate, "")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, []any{"NetworkDriver", "IpamDriver"}, out["Implements"])
	_, out = call(t, s, http.MethodPost, protocol.PathGetCapabilities, "")
	assert.Equal(t, "global", out["Scope"])

	code, out = call(t, s, http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n1","Options":{"com.docker.network.generic":{"k":"v"},
		"com.docker.network.internal":true,"com.docker.network.enable_ipv4":true},
		"IPv4Data":[{"AddressSpace":"local","Pool":"10.5.0.0/24","Gateway":"10.5.0.1/24","AuxAddresses":{"r":"10.5.0.9/24"}}]}`)
	require.Equal(t, http.StatusOK, code, out)
	require.Len(t, rec.nets, 1)
	assert.Equal(t, map[string]string{"k": "v"}, rec.nets[0].Options)
	assert.True(t, rec.nets[0].Internal)
	assert.Equal(t, "10.5.0.1/24", rec.nets[0].IPv4.Gateway.String())
	assert.Equal(t, "10.5.0.9", rec.nets[0].IPv4.AuxAddresses["r"].String())

	// No MAC: the server makes one and says so.
	code, out = call(t, s, http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.5.0.2/24"}}`)
	require.Equal(t, http.StatusOK, code, out)
	mac := out["Interface"].(map[string]any)["MacAddress"].(string)
	assert.Equal(t, mac, rec.eps[0].MAC.String())
	assert.Equal(t, "10.5.0.2/24", rec.eps[0].IPv4.String())
	_, out = call(t, s, http.MethodPost, protocol.PathEndpointOperInfo, `{"NetworkID":"n1","EndpointID":"e1"}`)
	assert.Equal(t, mac, out["Value"].(map[string]any)["mac_address"])
	code, _ = call(t, s, http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n1","EndpointID":"e1"}`)
	assert.Equal(t, http.StatusInternalServerError, code, "a second endpoint of one ID")
	code, _ = call(t, s, http.MethodPost, protocol.PathDeleteEndpoint, `{"NetworkID":"n1","EndpointID":"e1"}`)
	assert.Equal(t, http.StatusOK, code)

	// IPAM, through cnm's allocator.
	_, out = call(t, s, http.MethodPost, protocol.PathGetDefaultAddressSpaces, "")
	assert.Equal(t, ipam.LocalSpace, out["LocalDefaultAddressSpace"])
	code, out = call(t, s, http.MethodPost, protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.6.0.0/24"}`)
	require.Equal(t, http.StatusOK, code, out)
	pool := out["PoolID"].(string)
	_, out = call(t, s, http.MethodPost, protocol.PathRequestAddress, `{"PoolID":"`+pool+`","Address":"10.6.0.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
	assert.Equal(t, "10.6.0.1/24", out["Address"])
	_, out = call(t, s, http.MethodPost, protocol.PathRequestAddress, `{"PoolID":"`+pool+`"}`)
	assert.Equal(t, "10.6.0.2/24", out["Address"])
	code, _ = call(t, s, http.MethodPost, protocol.PathReleaseAddress, `{"PoolID":"`+pool+`","Address":"10.6.0.2"}`)
	assert.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodPost, protocol.PathReleasePool, `{"PoolID":"`+pool+`"}`)
	assert.Equal(t, http.StatusOK, code)
	code, out = call(t, s, http.MethodPost, protocol.PathRequestPool, `{"Pool":"10.6.0.0/24","V6":true}`)
	assert.Equal(t, http.StatusInternalServerError, code)
	assert.Contains(t, out["Err"], "10.6.0.0/24")
}

// TestServerMalformedRequests: each broken request gets the protocol's
// error answer, naming the field and value; nothing reaches the driver and
// the server keeps serving.
func TestServerMalformedRequests(t *testing.T) {
	s, rec := newServer(t)
	for _, tc := range []struct {
		method, path, body string
		code               int
		text               string
	}{
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":`, http.StatusBadRequest, "request body"},
		{http.MethodPost, protocol.PathCreateNetwork, `not json`, http.StatusBadRequest, "request body"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":5}`, http.StatusBadRequest, "NetworkID"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":""}`, http.StatusBadRequest, "NetworkID is empty"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","Options":{"com.docker.network.generic":{"k":1}}}`, http.StatusBadRequest, `"k" is float64, want a string`},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","Options":{"com.docker.network.generic":"x"}}`, http.StatusBadRequest, "want an object"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","Options":{"com.docker.network.internal":"yes"}}`, http.StatusBadRequest, "want a boolean"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","IPv4Data":[{"Pool":"banana"}]}`, http.StatusBadRequest, `IPv4Data[0].Pool "banana"`},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","IPv4Data":[{"Pool":"fd00::/64"}]}`, http.StatusBadRequest, `IPv4Data[0].Pool "fd00::/64"`},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","IPv4Data":[{"Pool":"10.0.0.0/24","Gateway":"10.1.0.1/24"}]}`, http.StatusBadRequest, `IPv4Data[0].Gateway "10.1.0.1/24"`},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","IPv4Data":[{"Pool":"10.0.0.0/24","AuxAddresses":{"a":"x"}}]}`, http.StatusBadRequest, `AuxAddresses["a"] "x"`},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"n","IPv4Data":[{"Pool":"10.0.0.0/24"},{"Pool":"10.1.0.0/24"}]}`, http.StatusBadRequest, "2 pools"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"panic"}`, http.StatusInternalServerError, "internal error in /NetworkDriver.CreateNetwork: driver bug"},
		{http.MethodPost, protocol.PathCreateNetwork, `{"NetworkID":"` + strings.Repeat("x", 5000) + `"}`, http.StatusBadRequest, "request body too large"},
		{http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n","EndpointID":"e","Interface":{"MacAddress":"zz"}}`, http.StatusBadRequest, `Interface.MacAddress "zz"`},
		{http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.0.0.2"}}`, http.StatusBadRequest, `Interface.Address "10.0.0.2"`},
		{http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n","EndpointID":"e","Interface":{"AddressIPv6":"10.0.0.2/24"}}`, http.StatusBadRequest, `Interface.AddressIPv6`},
		{http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"n"}`, http.StatusBadRequest, "both are required"},
		{http.MethodPost, protocol.PathJoin, `{"NetworkID":"n","EndpointID":"nosuch"}`, http.StatusInternalServerError, errdefs.ErrNotFound.Error() + ": endpoint nosuch on network n"},
		{http.MethodPost, protocol.PathLeave, `[]`, http.StatusBadRequest, "request body"},
		{http.MethodPost, protocol.PathProgramExternalConnectivity, `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":"x"}}`, http.StatusOK, ""},
		{http.MethodPost, protocol.PathRequestPool, `{"Pool":"x"}`, http.StatusBadRequest, `Pool "x"`},
		{http.MethodPost, protocol.PathRequestPool, `{"SubPool":"x"}`, http.StatusBadRequest, `SubPool "x"`},
		{http.MethodPost, protocol.PathRequestAddress, `{"PoolID":"nosuch"}`, http.StatusInternalServerError, `pool "nosuch"`},
		{http.MethodPost, protocol.PathReleaseAddress, `{"PoolID":"p","Address":"x"}`, http.StatusBadRequest, `Address "x"`},
		{http.MethodPost, "/VolumeDriver.Create", `{}`, http.StatusNotFound, "no such call /VolumeDriver.Create"},
		{http.MethodGet, protocol.PathActivate, ``, http.StatusMethodNotAllowed, "method GET"},
	} {
		code, out := call(t, s, tc.method, tc.path, tc.body)
		assert.Equal(t, tc.code, code, "%s %s", tc.path, tc.body)
		if tc.text != "" {
			assert.Contains(t, out["Err"], tc.text, "%s %s", tc.path, tc.body)
		}
	}
	assert.Empty(t, rec.nets)
	assert.Empty(t, rec.eps)
	code, _ := call(t, s, http.MethodPost, protocol.PathActivate, "")
	assert.Equal(t, http.StatusOK, code, "still serving")
}

func TestNewInvalid(t *testing.T) {
	_, err := server.New(context.Background(), server.Config{})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	_, err = server.New(context.Background(), server.Config{Driver: null.New()})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
}
