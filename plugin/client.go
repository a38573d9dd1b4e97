package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// Defaults of [Config].
const (
	// DefaultTimeout bounds one call, all its attempts included.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxResponse bounds the size of one answer.
	DefaultMaxResponse = 1 << 20
	// DefaultAttempts is how often a call that changes nothing is tried.
	DefaultAttempts = 3
)

// Locator returns where a plugin listens. A [Client] calls it each time it
// opens a connection.
type Locator func() (Spec, error)

// Fixed returns a Locator that always answers s.
func Fixed(s Spec) Locator { return func() (Spec, error) { return s, nil } }

// Config configures a [Client].
type Config struct {
	// Name is the plugin's name, for errors. Required.
	Name string
	// Locate finds the plugin; required. Use [Fixed] for a known address,
	// [Discovery.Locator] to look it up by name.
	Locate Locator
	// Timeout bounds each call, from its start to the end of its answer,
	// retries included. Zero: [DefaultTimeout].
	Timeout time.Duration
	// MaxResponse bounds the size of an answer in bytes. Zero:
	// [DefaultMaxResponse].
	MaxResponse int64
	// Attempts is how often a call that changes nothing (Plugin.Activate,
	// GetCapabilities, EndpointOperInfo, GetDefaultAddressSpaces) is tried
	// when the plugin cannot be reached or the connection breaks. Calls
	// that change something are tried once: a repeated CreateEndpoint that
	// the plugin had received would fail or make a second one. Zero:
	// [DefaultAttempts].
	Attempts int
}

// Client calls one plugin. It is safe for concurrent use; connections are
// kept open between calls. Close releases them.
type Client struct {
	cfg  Config
	http *http.Client
	tr   *http.Transport
}

// NewClient returns a client for the plugin cfg describes. It does not
// connect: the first call does. A missing name or locator, or a negative
// limit, is an error wrapping errdefs.ErrInvalid.
func NewClient(cfg Config) (*Client, error) {
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Locate == nil {
		return nil, fmt.Errorf("%w: plugin %q: no locator", errdefs.ErrInvalid, cfg.Name)
	}
	if cfg.Timeout < 0 || cfg.MaxResponse < 0 || cfg.Attempts < 0 {
		return nil, fmt.Errorf("%w: plugin %q: timeout %v, max response %d, attempts %d: none may be negative",
			errdefs.ErrInvalid, cfg.Name, cfg.Timeout, cfg.MaxResponse, cfg.Attempts)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxResponse == 0 {
		cfg.MaxResponse = DefaultMaxResponse
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = DefaultAttempts
	}
	c := &Client{cfg: cfg}
	var d net.Dialer
	c.tr = &http.Transport{
		// Every new connection looks the plugin up again: one that
		// restarted elsewhere is found.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			s, err := cfg.Locate()
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, s.Network, s.Address)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	c.http = &http.Client{Transport: c.tr}
	return c, nil
}

// Name returns the plugin's name.
func (c *Client) Name() string { return c.cfg.Name }

// Timeout returns the bound on each call.
func (c *Client) Timeout() time.Duration { return c.cfg.Timeout }

// Close closes the client's idle connections. Calls after Close still
// work, on new connections.
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// idempotent lists the calls that change nothing and may be repeated.
var idempotent = []string{
	protocol.PathActivate, protocol.PathGetCapabilities, protocol.PathEndpointOperInfo,
	protocol.PathIpamGetCapabilities, protocol.PathGetDefaultAddressSpaces,
}

// Activate performs the handshake and returns the interfaces the plugin
// implements. want, if not empty, must be among them: otherwise the error
// wraps errdefs.ErrNotSupported and lists what the plugin implements.
func (c *Client) Activate(ctx context.Context, want string) ([]string, error) {
	var resp protocol.ActivateResponse
	if err := c.Call(ctx, protocol.PathActivate, nil, &resp); err != nil {
		return nil, err
	}
	if want != "" && !slices.Contains(resp.Implements, want) {
		return resp.Implements, c.fail(protocol.PathActivate, fmt.Errorf("%w: implements %v, not %s", errdefs.ErrNotSupported, resp.Implements, want))
	}
	return resp.Implements, nil
}

// Call posts req (nil: an empty body) as JSON to path ("/NetworkDriver.Join")
// and decodes the answer into resp, if not nil. resp should embed
// protocol.ErrorResponse: a non-empty Err is returned as an error wrapping
// [ErrPlugin] with the plugin's text. Calls in the idempotent list are
// retried (see Config.Attempts); others are sent once. Every error is a
// [*CallError].
func (c *Client) Call(ctx context.Context, path string, req, resp any) error {
	var body []byte
	if req != nil {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return c.fail(path, fmt.Errorf("%w: encode request: %w", errdefs.ErrInvalid, err))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	attempts := 1
	if slices.Contains(idempotent, path) {
		attempts = c.cfg.Attempts
	}
	backoff := 20 * time.Millisecond
	var err error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return c.fail(path, c.ctxErr(ctx, err))
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		var data []byte
		data, err = c.post(ctx, path, body)
		if err == nil {
			return c.decode(path, data, resp)
		}
		if ctx.Err() != nil {
			return c.fail(path, c.ctxErr(ctx, err))
		}
		var he *httpError
		if errors.As(err, &he) {
			return c.fail(path, err)
		}
	}
	return c.fail(path, fmt.Errorf("%w: %w", ErrUnavailable, err))
}

// ctxErr explains a call cut short by its context: the timeout, or the
// caller's cancellation.
func (c *Client) ctxErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer within %v: %w", ErrUnavailable, c.cfg.Timeout, context.DeadlineExceeded)
	}
	if err == nil {
		err = ctx.Err()
	}
	return fmt.Errorf("%w: %w", ctx.Err(), err)
}

// httpError is an answer that arrived but is not a success.
type httpError struct{ err error }

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

// post sends one request and returns the answer's body. A transport
// failure is returned as is; an answer that arrived but failed (HTTP
// status, size) as an *httpError.
func (c *Client) post(ctx context.Context, path string, body []byte) ([]byte, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin"+path, bytes.NewReader(body))
	if err != nil {
		return nil, &httpError{err}
	}
	hreq.Header.Set("Content-Type", protocol.ContentType)
	hreq.Header.Set("Accept", protocol.ContentType)
	res, err := c.http.Do(hreq)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, c.cfg.MaxResponse+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > c.cfg.MaxResponse {
		return nil, &httpError{fmt.Errorf("%w: answer larger than %d bytes", ErrProtocol, c.cfg.MaxResponse)}
	}
	if res.StatusCode != http.StatusOK {
		var e protocol.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Err != "" {
			return nil, &httpError{fmt.Errorf("%w: %s", ErrPlugin, e.Err)}
		}
		err := fmt.Errorf("%w: HTTP %s: %s", ErrProtocol, res.Status, excerpt(data))
		if res.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", errdefs.ErrNotSupported, err)
		}
		return nil, &httpError{err}
	}
	return data, nil
}

// errorCarrier is an answer with the protocol's Err field.
type errorCarrier interface{ PluginErr() string }

// decode decodes a successful answer into resp and reports its Err field.
func (c *Client) decode(path string, data []byte, resp any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil // a void call answered with an empty body
	}
	if resp == nil {
		resp = &protocol.ErrorResponse{}
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return c.fail(path, fmt.Errorf("%w: malformed JSON answer %s: %w", ErrProtocol, excerpt(data), err))
	}
	if e, ok := resp.(errorCarrier); ok && e.PluginErr() != "" {
		return c.fail(path, fmt.Errorf("%w: %s", ErrPlugin, e.PluginErr()))
	}
	return nil
}

func (c *Client) fail(path string, err error) error {
	return &CallError{Plugin: c.cfg.Name, Call: strings.TrimPrefix(path, "/"), Err: err}
}

// excerpt quotes the start of an answer for an error message.
func excerpt(data []byte) string {
	const n = 120
	if len(data) > n {
		return fmt.Sprintf("%q...", data[:n])
	}
	return fmt.Sprintf("%q", data)
}
