module github.com/gpuslice/gpuslice

go 1.26.8

require (
	github.com/NVIDIA/go-nvml v0.13.3-0
	github.com/fsnotify/fsnotify v1.10.1
	github.com/google/go-cmp v0.7.0
	golang.org/x/sync v0.24.0
	google.golang.org/grpc v1.85.0
	k8s.io/kubelet v0.33.13
	sigs.k8s.io/yaml v1.6.0
)

require (
	github.com/gogo/protobuf v1.3.2 // indirect
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
