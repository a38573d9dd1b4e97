package plugin_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// BenchmarkCall measures one call's round trip over a unix socket, on a
// kept-alive connection: the protocol's own cost, without a driver's work.
func BenchmarkCall(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"InterfaceName":{"SrcName":"veth0","DstPrefix":"eth"},"Gateway":"10.0.0.1"}`)
	})
	c := serve(b, h, plugin.Config{})
	ctx := context.Background()
	req := protocol.JoinRequest{NetworkID: "n", EndpointID: "e", SandboxKey: "/run/netns/x"}
	b.ResetTimer()
	for range b.N {
		var resp protocol.JoinResponse
		if err := c.Call(ctx, protocol.PathJoin, req, &resp); err != nil {
			b.Fatal(err)
		}
	}
}
