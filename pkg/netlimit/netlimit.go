package netlimit

import (
	"net"
	"sync"
)

// Limits bounds a listener: Total connections open at once, and PerSource
// of them from one remote IP address.
type Limits struct {
	Total     int
	PerSource int
}

// Listen returns lis bounded by l. A connection past either bound is
// closed as soon as it is accepted, never left waiting in the kernel's
// backlog: a client past its share is refused at once, and the
// connections of every other source are still accepted. Accept counts
// each refusal in Refused.
func Listen(lis net.Listener, l Limits) *Listener {
	return &Listener{Listener: lis, limits: l, open: map[string]int{}}
}

// Listener is a net.Listener whose connections are bounded by Limits.
type Listener struct {
	net.Listener
	limits Limits

	mu      sync.Mutex
	open    map[string]int // connections open, by remote IP
	total   int
	refused uint64
}

// Accept returns the next connection within the bounds, closing those
// past them.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		if l.take(src) {
			return &conn{Conn: c, release: func() { l.give(src) }}, nil
		}
		_ = c.Close()
	}
}

// Refused is how many connections were closed for being past a bound.
func (l *Listener) Refused() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

func (l *Listener) take(src string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.limits.Total || l.open[src] >= l.limits.PerSource {
		l.refused++
		return false
	}
	l.total++
	l.open[src]++
	return true
}

func (l *Listener) give(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.open[src]--; l.open[src] <= 0 {
		delete(l.open, src) // the map holds only sources with connections open
	}
}

// sourceOf is the IP address a connection comes from; the port is not
// part of it, or every new connection would be a new source.
func sourceOf(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// conn gives its place back once, however often it is closed.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Source is the IP address of an HTTP request's RemoteAddr (host:port),
// the key that bounds each client.
func Source(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}
