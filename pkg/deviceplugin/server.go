package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// kubeletSocket is the kubelet's registration socket name in the plugin dir.
const kubeletSocket = "kubelet.sock"

// registerTimeout bounds one Register call; the kubelet answers in
// milliseconds when it is up.
const registerTimeout = 5 * time.Second

// After a kubelet socket event the plugin acts as soon as the kubelet
// answers on kubelet.sock, dialing it every readyPoll, or after
// settleDelay whatever happens (the kubelet removed the plugin's socket
// and is not back yet: serve again, and let the retry register).
const (
	readyPoll   = 2 * time.Millisecond
	settleDelay = time.Second
)

// endpoint is one device plugin's socket and registration with the
// kubelet: it serves impl on a unix socket in dir, registers resource, and
// serves and registers again whenever the kubelet restarts.
type endpoint struct {
	dir        string // the kubelet's device plugin dir
	baseSocket string // the socket name asked for
	socket     string // the socket's file name in dir
	unique     bool   // socket names carry a per-instance suffix
	resource   string
	retry      time.Duration
	log        *slog.Logger
	impl       pluginapi.DevicePluginServer
	// grpcOptions are the server's options beyond the limits every
	// endpoint has.
	grpcOptions []grpc.ServerOption
	// describe gives the log attributes of a registration.
	describe func() []any
	// noPreferred registers without GetPreferredAllocation.
	noPreferred bool

	registered atomic.Bool
	// kubelet is the kubelet socket file last registered with; nil before.
	kubelet atomic.Pointer[socketFile]
}

// newEndpoint is the endpoint of a plugin with opts, serving impl.
func newEndpoint(opts Options, impl pluginapi.DevicePluginServer, describe func() []any, grpcOptions ...grpc.ServerOption) endpoint {
	return endpoint{
		dir: opts.PluginDir, baseSocket: opts.SocketName, socket: socketName(opts), unique: opts.UniqueSocket,
		resource: opts.ResourceName, retry: opts.RegisterRetry, log: opts.Logger, impl: impl,
		grpcOptions: grpcOptions, describe: describe,
	}
}

// Registered reports whether the last registration with the kubelet
// succeeded and the kubelet has not restarted since.
func (e *endpoint) Registered() bool { return e.registered.Load() }

// SocketPath returns the path of the plugin's own socket.
func (e *endpoint) SocketPath() string {
	return filepath.Join(e.dir, e.socket)
}

// uniqueSuffixExample is as long as the longest suffix socketName adds.
const uniqueSuffixExample = "-1234567890abc"

// socketName is the plugin's socket file name: SocketName, or with
// UniqueSocket SocketName with "-<now in ns, base 36>" before its
// extension.
func socketName(o Options) string {
	if !o.UniqueSocket {
		return o.SocketName
	}
	ext := filepath.Ext(o.SocketName)
	return strings.TrimSuffix(o.SocketName, ext) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ext
}

// removeStaleSockets removes, with UniqueSocket, the sockets earlier
// instances left (killed before they could remove them) that nothing
// answers on any more. One that answers belongs to an instance still
// running, which removes it when it stops.
func (e *endpoint) removeStaleSockets() {
	if !e.unique {
		return
	}
	ext := filepath.Ext(e.baseSocket)
	pattern := filepath.Join(e.dir, strings.TrimSuffix(e.baseSocket, ext)+"-*"+ext)
	stale, _ := filepath.Glob(pattern)
	for _, path := range stale {
		if path == e.SocketPath() || dialable(path) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.log.Warn("remove an earlier instance's socket", "path", path, "err", err)
			continue
		}
		e.log.Info("removed an earlier instance's socket", "path", path)
	}
}

// Run serves the plugin on its socket and registers it with the kubelet,
// until ctx ends. It re-creates the socket and registers again whenever the
// kubelet restarts (kubelet.sock is created again, or the kubelet removes the
// plugin's socket), and retries registration every RegisterRetry while the
// kubelet does not answer. On return the socket is removed. It fails only
// when the plugin dir cannot be watched or the socket cannot be created.
func (p *Plugin) Run(ctx context.Context) error {
	if p.opts.DRAGPUs != nil {
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { stop(); <-done }()
		go func() { defer close(done); p.watchDRA(wctx) }()
	}
	return p.run(ctx)
}

// run serves the endpoint and keeps it registered, as Plugin.Run says.
func (e *endpoint) run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch device plugin dir: %w", err)
	}
	defer func() { _ = w.Close() }() // nothing useful to do if closing the watcher fails
	if err := w.Add(e.dir); err != nil {
		return fmt.Errorf("watch device plugin dir %s: %w", e.dir, err)
	}
	for {
		srv, served, err := e.serve()
		if err != nil {
			return err
		}
		e.register(ctx)
		if done := e.watch(ctx, w, served); done {
			e.stop(srv)
			return nil
		}
		e.stopServer(srv, false)
	}
}

// restartWatch times the plugin's response to a kubelet restart: from the
// first event, it dials the kubelet every readyPoll, and acts once the new
// kubelet answers or settleDelay has passed.
type restartWatch struct {
	settle  <-chan time.Time // set from a kubelet event until acted on
	poll    *time.Ticker     // dials the kubelet meanwhile
	polling <-chan time.Time
}

func (r *restartWatch) start() {
	if r.settle == nil {
		r.settle = time.After(settleDelay)
		r.poll = time.NewTicker(readyPoll)
		r.polling = r.poll.C
	}
}

func (r *restartWatch) stop() {
	if r.poll != nil {
		r.poll.Stop()
	}
	r.poll, r.polling, r.settle = nil, nil, nil
}

// watch follows the kubelet and the plugin's own server. It returns false
// when the plugin must serve anew (its server stopped, or a restarted
// kubelet needs a new one), true when ctx ended.
func (e *endpoint) watch(ctx context.Context, w *fsnotify.Watcher, served <-chan error) bool {
	kubelet := filepath.Join(e.dir, kubeletSocket)
	own := e.SocketPath()
	retry := time.NewTicker(e.retry)
	defer retry.Stop()
	var rw restartWatch
	defer rw.stop()
	for {
		select {
		case <-ctx.Done():
			return true
		case err := <-served:
			e.log.Error("device plugin server stopped; restarting", "err", err)
			// Do not spin if the socket keeps failing.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			return false
		case err := <-w.Errors:
			// Events may have been lost (an overflow): look again.
			e.log.Warn("device plugin dir watch error", "err", err)
			rw.start()
		case ev := <-w.Events:
			// A kubelet restart creates a new kubelet.sock, and may remove
			// our socket first: act once, as soon as the new kubelet
			// answers. Events that arrive after the plugin acted on them
			// (a restart sends several) name the socket it registered
			// with, and are let go.
			if (ev.Name == kubelet && ev.Has(fsnotify.Create) && e.newKubelet(kubelet)) ||
				(ev.Name == own && ev.Has(fsnotify.Remove|fsnotify.Rename) && !exists(own)) {
				rw.start()
			}
		case <-rw.polling:
			if !dialable(kubelet) {
				continue
			}
			rw.stop()
			if e.kubeletRestarted(ctx, own) {
				return false
			}
		case <-rw.settle:
			rw.stop()
			if e.kubeletRestarted(ctx, own) {
				return false
			}
		case <-retry.C:
			switch {
			case !e.Registered():
				e.register(ctx)
			case e.newKubelet(kubelet) && dialable(kubelet):
				// A restart the watch did not show (events lost, or a
				// kubelet.sock made where no event reaches).
				e.log.Warn("kubelet socket replaced without a watch event")
				if e.kubeletRestarted(ctx, own) {
					return false
				}
			}
		}
	}
}

// kubeletRestarted acts on a kubelet restart: it reports true when the
// kubelet removed the plugin's socket, which must then be served again
// (and registered from there), and otherwise registers again at once. It
// does nothing when the kubelet's socket is the one registered with (the
// event came from a restart already acted on).
func (e *endpoint) kubeletRestarted(ctx context.Context, own string) bool {
	if !exists(own) {
		e.log.Info("plugin socket removed by the kubelet; serving again and re-registering")
		return true
	}
	if !e.newKubelet(filepath.Join(e.dir, kubeletSocket)) {
		return false
	}
	e.log.Info("kubelet restarted; re-registering")
	e.registered.Store(false)
	e.register(ctx)
	return false
}

// socketFile names one socket file: a new kubelet binds a new file. Its
// inode number alone does not tell: ext4 gives a file the number of one
// just removed, so a kubelet back within milliseconds often has its
// predecessor's. Inode and change time together do.
type socketFile struct {
	ino   uint64
	ctime syscall.Timespec
}

// socketFileAt is the file at path; the zero value when there is none.
func socketFileAt(path string) socketFile {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return socketFile{}
	}
	return socketFile{ino: st.Ino, ctime: st.Ctim}
}

// newKubelet reports whether a kubelet socket is at path that the plugin
// has not registered with.
func (e *endpoint) newKubelet(path string) bool {
	f := socketFileAt(path)
	if f == (socketFile{}) {
		return false
	}
	known := e.kubelet.Load()
	return known == nil || *known != f
}

// dialable reports whether something accepts connections on a unix socket.
func dialable(path string) bool {
	c, err := net.DialTimeout("unix", path, 50*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// serve listens on the plugin socket, replacing a stale one, and serves
// gRPC on it. served receives the server's error if it stops on its own.
func (e *endpoint) serve() (*grpc.Server, <-chan error, error) {
	e.removeStaleSockets()
	path := e.SocketPath()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Bounded against clients that connect and never speak, streams that
	// are never read and peers that vanish: the kubelet needs one
	// connection and one stream.
	lis = netutil.LimitListener(lis, maxConnections)
	srv := grpc.NewServer(append([]grpc.ServerOption{
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, e.grpcOptions...)...)
	pluginapi.RegisterDevicePluginServer(srv, e.impl)
	served := make(chan error, 1)
	go func() {
		if err := srv.Serve(lis); err != nil {
			served <- err
		}
	}()
	return srv, served, nil
}

// Limits on the plugin's gRPC server.
const (
	maxConnections          = 32
	maxStreamsPerConnection = 4
	handshakeTimeout        = 2 * time.Second
	// stopGrace is how long in-flight calls get to finish before the
	// server is stopped hard.
	stopGrace = time.Second
)

// stop stops the server, ending ListAndWatch streams, and removes the
// socket. It gives in-flight calls stopGrace, then stops hard, and never
// waits on a client: a connection that never finished its handshake can
// hold grpc's Stop for the handshake timeout.
func (e *endpoint) stop(srv *grpc.Server) { e.stopServer(srv, true) }

// stopServer stops the server, gracefully or not: a kubelet that removed
// the plugin's socket has gone, and its streams with it, so waiting on
// them would only delay serving the new one.
func (e *endpoint) stopServer(srv *grpc.Server, graceful bool) {
	e.registered.Store(false)
	done := make(chan struct{})
	if graceful {
		go func() { srv.GracefulStop(); close(done) }()
	} else {
		go func() { srv.Stop(); close(done) }()
	}
	select {
	case <-done:
	case <-time.After(stopGrace):
		go srv.Stop() // ends streams and connections; returns when handshakes end
		select {
		case <-done:
		case <-time.After(stopGrace):
			e.log.Warn("device plugin server still stopping; carrying on")
		}
	}
	if err := os.Remove(e.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("remove plugin socket", "path", e.SocketPath(), "err", err)
	}
}

// register asks the kubelet to use the plugin. Failure is logged, not
// returned: the kubelet may simply not be up yet, and Run retries.
func (e *endpoint) register(ctx context.Context) {
	if err := e.Register(ctx); err != nil {
		e.log.Warn("kubelet registration failed; will retry", "err", err)
		return
	}
	e.log.Info("registered with kubelet", append([]any{"resource", e.resource, "socket", e.SocketPath()}, e.describe()...)...)
}

// Register makes one registration call to the kubelet.
func (e *endpoint) Register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	path := filepath.Join(e.dir, kubeletSocket)
	file := socketFileAt(path) // before the call: a kubelet that replaces it meanwhile is new
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial kubelet at %s: %w", path, err)
	}
	defer func() { _ = conn.Close() }() // the call is done; a close error changes nothing
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     e.socket,
		ResourceName: e.resource,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: !e.noPreferred},
	})
	if err != nil {
		return fmt.Errorf("register %s with kubelet at %s: %w", e.resource, path, err)
	}
	e.registered.Store(true)
	e.kubelet.Store(&file)
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
