// Package acceptloop serves the connections of a listener, each in a
// goroutine of its own: the loop every test server and demo of this module
// runs, in a package that cnmtest and the packages cnmtest builds on can
// all import.
package acceptloop

import "net"

// Run accepts connections on l until Accept fails (l was closed), and hands
// each to handle in a goroutine of its own, closing the connection when
// handle returns. A nil handle closes every connection at once.
func Run(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if handle != nil {
				handle(c)
			}
		}()
	}
}
