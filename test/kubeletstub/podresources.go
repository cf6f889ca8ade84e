package kubeletstub

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpuslice/gpuslice/pkg/node"
)

// PodResources serves the kubelet's pod-resources v1 API from the
// stand-in's allocations: every container that Plugin.Allocate admitted is
// listed with its device IDs, as the kubelet lists what its device manager
// assigned. Pods named "namespace/name" in Allocate are reported in that
// namespace, others in "default".
type PodResources struct {
	podresourcesapi.UnimplementedPodResourcesListerServer

	kubelet *Kubelet
	socket  string
	srv     *grpc.Server

	mu       sync.Mutex
	extra    []*podresourcesapi.PodResources
	noGet    bool
	listHook func()
}

// ServePodResources serves the pod-resources API on socket.
func (k *Kubelet) ServePodResources(socket string) (*PodResources, error) {
	s := &PodResources{kubelet: k, socket: socket}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *PodResources) start() error {
	_ = os.Remove(s.socket)
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.srv = grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(s.srv, s)
	go func() { _ = s.srv.Serve(lis) }()
	return nil
}

// Stop stops serving and removes the socket, as a kubelet going away does.
func (s *PodResources) Stop() {
	s.srv.Stop()
	_ = os.Remove(s.socket)
}

// Restart stops and serves again on the same path.
func (s *PodResources) Restart() error {
	s.Stop()
	return s.start()
}

// SetExtraPods adds pods to every answer, beside the allocations.
func (s *PodResources) SetExtraPods(pods []*podresourcesapi.PodResources) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra = pods
}

// DisableGet makes Get answer Unimplemented, as a kubelet without the
// KubeletPodResourcesGet feature gate does.
func (s *PodResources) DisableGet(disabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noGet = disabled
}

// SetListHook runs fn at the start of every List call, e.g. to block it.
func (s *PodResources) SetListHook(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listHook = fn
}

// PodUIDs are the UIDs the API server gives the pods the stand-in lists
// (PodUID of "namespace/name"), by namespace and name, as the agent's list
// of its node's pods would have them; a new map each call.
func (s *PodResources) PodUIDs() map[node.PodName]string {
	out := map[node.PodName]string{}
	for _, p := range s.pods() {
		out[node.PodName{Namespace: p.Namespace, Name: p.Name}] = PodUID(p.Namespace + "/" + p.Name)
	}
	return out
}

// List implements the pod-resources API.
func (s *PodResources) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	s.mu.Lock()
	hook := s.listHook
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	return &podresourcesapi.ListPodResourcesResponse{PodResources: s.pods()}, nil
}

// Get implements the pod-resources API.
func (s *PodResources) Get(_ context.Context, r *podresourcesapi.GetPodResourcesRequest) (*podresourcesapi.GetPodResourcesResponse, error) {
	s.mu.Lock()
	noGet := s.noGet
	s.mu.Unlock()
	if noGet {
		return nil, status.Error(codes.Unimplemented, "PodResources API Get method disabled")
	}
	for _, p := range s.pods() {
		if p.Namespace == r.PodNamespace && p.Name == r.PodName {
			return &podresourcesapi.GetPodResourcesResponse{PodResources: p}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "pod %s/%s not found", r.PodNamespace, r.PodName)
}

func (s *PodResources) pods() []*podresourcesapi.PodResources {
	type key struct{ ns, pod, ctr string }
	byCtr := map[key]map[string][]string{} // container -> resource -> ids
	s.kubelet.mu.Lock()
	for resource, ids := range s.kubelet.allocated {
		for id, owner := range ids {
			// Allocate's owner is "pod/container", where pod may be "ns/name".
			parts := strings.Split(owner, "/")
			if len(parts) == 2 {
				parts = append([]string{"default"}, parts...)
			}
			ns, name, ctr := parts[0], parts[1], strings.Join(parts[2:], "/")
			k := key{ns, name, ctr}
			if byCtr[k] == nil {
				byCtr[k] = map[string][]string{}
			}
			byCtr[k][resource] = append(byCtr[k][resource], id)
		}
	}
	s.kubelet.mu.Unlock()

	pods := map[[2]string]*podresourcesapi.PodResources{}
	for k, res := range byCtr {
		pk := [2]string{k.ns, k.pod}
		p := pods[pk]
		if p == nil {
			p = &podresourcesapi.PodResources{Namespace: k.ns, Name: k.pod}
			pods[pk] = p
		}
		c := &podresourcesapi.ContainerResources{Name: k.ctr}
		for resource, ids := range res {
			sort.Strings(ids)
			c.Devices = append(c.Devices, &podresourcesapi.ContainerDevices{ResourceName: resource, DeviceIds: ids})
		}
		p.Containers = append(p.Containers, c)
	}
	out := make([]*podresourcesapi.PodResources, 0, len(pods))
	for _, p := range pods {
		out = append(out, p)
	}
	s.mu.Lock()
	out = append(out, s.extra...)
	s.mu.Unlock()
	return out
}
