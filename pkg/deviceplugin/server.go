package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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

// settleDelay is how long kubelet socket events are collected before the
// plugin acts on them.
const settleDelay = 100 * time.Millisecond

// SocketPath returns the path of the plugin's own socket.
func (p *Plugin) SocketPath() string {
	return filepath.Join(p.opts.PluginDir, p.opts.SocketName)
}

// Run serves the plugin on its socket and registers it with the kubelet,
// until ctx ends. It re-creates the socket and registers again whenever the
// kubelet restarts (kubelet.sock is created again, or the kubelet removes the
// plugin's socket), and retries registration every RegisterRetry while the
// kubelet does not answer. On return the socket is removed. It fails only
// when the plugin dir cannot be watched or the socket cannot be created.
func (p *Plugin) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch device plugin dir: %w", err)
	}
	defer func() { _ = w.Close() }() // nothing useful to do if closing the watcher fails
	if err := w.Add(p.opts.PluginDir); err != nil {
		return fmt.Errorf("watch device plugin dir %s: %w", p.opts.PluginDir, err)
	}
	kubelet := filepath.Join(p.opts.PluginDir, kubeletSocket)
	own := p.SocketPath()

	for {
		srv, served, err := p.serve()
		if err != nil {
			return err
		}
		p.register(ctx)
		retry := time.NewTicker(p.opts.RegisterRetry)
		var settle <-chan time.Time // set while kubelet events are coalescing
		restart := false
		for !restart {
			select {
			case <-ctx.Done():
				retry.Stop()
				p.stop(srv)
				return nil
			case err := <-served:
				p.log.Error("device plugin server stopped; restarting", "err", err)
				restart = true
				// Do not spin if the socket keeps failing.
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			case err := <-w.Errors:
				p.log.Warn("device plugin dir watch error", "err", err)
			case ev := <-w.Events:
				// A kubelet restart removes our socket and creates its own
				// within milliseconds; act once, when the events settle.
				if (ev.Name == kubelet && ev.Has(fsnotify.Create)) || (ev.Name == own && ev.Has(fsnotify.Remove|fsnotify.Rename)) {
					if settle == nil {
						settle = time.After(settleDelay)
					}
				}
			case <-settle:
				settle = nil
				if !exists(own) {
					p.log.Info("plugin socket removed by the kubelet; serving again and re-registering")
					restart = true
					continue
				}
				p.log.Info("kubelet restarted; re-registering")
				p.registered.Store(false)
				p.register(ctx)
			case <-retry.C:
				if !p.Registered() {
					p.register(ctx)
				}
			}
		}
		retry.Stop()
		p.stop(srv)
	}
}

// serve listens on the plugin socket, replacing a stale one, and serves
// gRPC on it. served receives the server's error if it stops on its own.
func (p *Plugin) serve() (*grpc.Server, <-chan error, error) {
	path := p.SocketPath()
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
	srv := grpc.NewServer(
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	pluginapi.RegisterDevicePluginServer(srv, p)
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
func (p *Plugin) stop(srv *grpc.Server) {
	p.registered.Store(false)
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopGrace):
		go srv.Stop() // ends streams and connections; returns when handshakes end
		select {
		case <-done:
		case <-time.After(stopGrace):
			p.log.Warn("device plugin server still stopping; carrying on")
		}
	}
	if err := os.Remove(p.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("remove plugin socket", "path", p.SocketPath(), "err", err)
	}
}

// register asks the kubelet to use the plugin. Failure is logged, not
// returned: the kubelet may simply not be up yet, and Run retries.
func (p *Plugin) register(ctx context.Context) {
	if err := p.Register(ctx); err != nil {
		p.log.Warn("kubelet registration failed; will retry", "err", err)
		return
	}
	p.log.Info("registered with kubelet", "resource", p.opts.ResourceName, "socket", p.SocketPath(), "slices", p.layout.TotalSlices())
}

// Register makes one registration call to the kubelet.
func (p *Plugin) Register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	path := filepath.Join(p.opts.PluginDir, kubeletSocket)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial kubelet at %s: %w", path, err)
	}
	defer func() { _ = conn.Close() }() // the call is done; a close error changes nothing
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     p.opts.SocketName,
		ResourceName: p.opts.ResourceName,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s with kubelet at %s: %w", p.opts.ResourceName, path, err)
	}
	p.registered.Store(true)
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
