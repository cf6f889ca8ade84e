package netlimit_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/netlimit"
)

// accepted serves lis, keeping every connection it is given open, and
// sends each on the channel.
func accepted(t *testing.T, lis net.Listener) <-chan net.Conn {
	t.Helper()
	out := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				close(out)
				return
			}
			out <- c
		}
	}()
	return out
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// closedByServer is whether the server closed c (a read ends with EOF).
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

// One source gets its share and no more; another source is still
// accepted; a place given back is taken again.
func TestPerSourceAndTotalBounds(t *testing.T) {
	t.Parallel()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := netlimit.Listen(raw, netlimit.Limits{Total: 3, PerSource: 2})
	defer func() { _ = lis.Close() }()
	got := accepted(t, lis)
	addr := raw.Addr().String()
	a1, _ := dialFrom(t, "127.0.0.2", addr), dialFrom(t, "127.0.0.2", addr)
	server1, server2 := <-got, <-got
	if over := dialFrom(t, "127.0.0.2", addr); !closedByServer(over) {
		t.Error("a third connection from one source was kept, want it closed (2 per source)")
	}
	dialFrom(t, "127.0.0.3", addr)
	<-got // another source is accepted beside the first's two
	if over := dialFrom(t, "127.0.0.4", addr); !closedByServer(over) {
		t.Error("a fourth connection in all was kept, want it closed (3 in all)")
	}
	if n := lis.Refused(); n != 2 {
		t.Errorf("Refused() = %d, want 2", n)
	}
	// Closing gives the place back, once however often it is closed.
	_ = server1.Close()
	_ = server1.Close()
	_ = a1.Close()
	dialFrom(t, "127.0.0.2", addr)
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a place given back was not taken again")
	}
	if over := dialFrom(t, "127.0.0.5", addr); !closedByServer(over) {
		t.Error("past the total after a place was given back and taken, want it closed")
	}
	_ = server2.Close()
}

func TestSource(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"10.0.0.1:4000": "10.0.0.1", "[fd00::1]:80": "fd00::1", "garbage": "garbage"} {
		if got := netlimit.Source(in); got != want {
			t.Errorf("Source(%q) = %q, want %q", in, got, want)
		}
	}
}
