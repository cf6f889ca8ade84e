# gpu-agent's image, for those who build with a container engine. Without
# one, `make image` writes the same image as an OCI archive.
#
# The agent links glibc dynamically: go-nvml loads the host's
# libnvidia-ml.so.1 with dlopen, which a static binary cannot do safely.
# It runs as root: it freezes other containers' cgroups, kills their
# processes over a memory limit and serves the kubelet's device-plugin
# socket, all of which need it (the DaemonSet runs it privileged).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gpu-agent ./cmd/gpu-agent

FROM gcr.io/distroless/base-debian12
COPY --from=build /out/gpu-agent /gpu-agent
# The NVIDIA container toolkit mounts the driver's libraries (NVML) into
# containers that ask, as NVIDIA's device plugin image does.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility
ENTRYPOINT ["/gpu-agent"]
