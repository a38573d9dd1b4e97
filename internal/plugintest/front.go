package plugintest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
)

// Fault is a way to break one call on the wire.
type Fault int

const (
	// Pass forwards the call.
	Pass Fault = iota
	// MalformedJSON answers 200 with a truncated JSON object.
	MalformedJSON
	// HTTPError answers 500 with a plain-text body and no Err field.
	HTTPError
	// ErrField answers 500 with {"Err": FaultText}, as the SDK does for an
	// error.
	ErrField
	// Huge answers 200 with a valid JSON object of 4 MiB.
	Huge
	// Hang never answers.
	Hang
	// UnknownInterface forwards the call, then replaces
	// InterfaceName.SrcName in the answer with [UnknownInterfaceName]
	// (meant for Join).
	UnknownInterface
)

// FaultText is the error text of [ErrField].
const FaultText = "the frobnicator is out of order"

// UnknownInterfaceName is the interface name [UnknownInterface] answers.
const UnknownInterfaceName = "nosuchveth0"

// Front serves a plugin's socket in front of another plugin's and breaks
// chosen calls. Start it with [StartFront].
type Front struct {
	*Server
	hangs chan struct{} // closed by Close: hanging handlers return

	// mu guards faults.
	mu     sync.Mutex
	faults map[string]Fault // by path, "/NetworkDriver.Join"
}

// StartFront serves on a unix socket at socket and forwards calls to the
// plugin at backend (a socket path), breaking those [Front.Set] names.
func StartFront(socket, backend string) (*Front, error) {
	f := &Front{faults: map[string]Fault{}, hangs: make(chan struct{})}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "plugin"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", backend)
		}},
		ModifyResponse: func(res *http.Response) error {
			if f.fault(res.Request.URL.Path) != UnknownInterface {
				return nil
			}
			var body map[string]any
			if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
				return err
			}
			res.Body.Close()
			if in, ok := body["InterfaceName"].(map[string]any); ok {
				in["SrcName"] = UnknownInterfaceName
			}
			data, _ := json.Marshal(body)
			res.Body = io.NopCloser(bytes.NewReader(data))
			res.ContentLength = int64(len(data))
			res.Header.Set("Content-Length", strconv.Itoa(len(data)))
			return nil
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch f.fault(r.URL.Path) {
		case MalformedJSON:
			io.WriteString(w, `{"Err": "", "Scope": "lo`)
		case HTTPError:
			http.Error(w, "upstream connect error or disconnect/reset before headers", http.StatusInternalServerError)
		case ErrField:
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]string{"Err": FaultText})
		case Huge:
			io.WriteString(w, `{"Value": "`)
			chunk := strings.Repeat("x", 64<<10)
			for i := 0; i < 64; i++ {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
			}
			io.WriteString(w, `"}`)
		case Hang:
			select {
			case <-r.Context().Done():
			case <-f.hangs:
			}
		default:
			proxy.ServeHTTP(w, r)
		}
	})
	srv := &http.Server{Handler: h}
	var err error
	f.Server, err = serve(socket, srv.Serve)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Set breaks the call at path ("/NetworkDriver.Join") with fault; Pass
// forwards it again.
func (f *Front) Set(path string, fault Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[path] = fault
}

func (f *Front) fault(path string) Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults[path]
}

// Close stops serving; hanging calls return.
func (f *Front) Close() error {
	select {
	case <-f.hangs:
	default:
		close(f.hangs)
	}
	return f.Server.Close()
}
