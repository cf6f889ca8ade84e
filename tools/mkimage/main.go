// Command mkimage builds gpuslice's container images as OCI archives
// without a container engine (make image): the binary, the shared
// libraries it links (glibc: go-nvml loads libnvidia-ml.so.1 with dlopen,
// which a static binary cannot do safely) and nothing else. The NVIDIA
// library itself comes from the host at run time, as with NVIDIA's own
// device plugin (the NVIDIA container toolkit mounts it).
//
//	go run ./tools/mkimage --binary bin/gpu-agent --name ghcr.io/gpuslice/gpu-agent:v0.1.0 --out bin/gpu-agent-image.tar
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/gpuslice/gpuslice/internal/oci"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	binary := fs.String("binary", "bin/gpu-agent", "the agent `binary`")
	name := fs.String("name", "ghcr.io/gpuslice/gpu-agent:dev", "image `reference`")
	out := fs.String("out", "bin/gpu-agent-image.tar", "OCI archive to write")
	version := fs.String("version", "dev", "version label")
	nvidiaEnv := fs.Bool("nvidia-env", true, "ask the NVIDIA container toolkit for the driver's libraries (the agent)")
	user := fs.String("user", "", "`uid` to run as (empty: root)")
	extra := fs.String("extra", "", "more `binaries`, comma-separated, each at /<name> beside the entrypoint (gpu-dra-driver in the agent's image)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	entry := "/" + filepath.Base(*binary)
	files := map[string]oci.File{entry: {Source: *binary}}
	binaries := []string{*binary}
	if *extra != "" {
		for _, b := range strings.Split(*extra, ",") {
			files["/"+filepath.Base(b)] = oci.File{Source: b}
			binaries = append(binaries, b)
		}
	}
	var libs []string
	for _, b := range binaries {
		l, err := sharedLibraries(b)
		if err != nil {
			return err
		}
		libs = append(libs, l...)
	}
	for _, l := range libs {
		real, err := filepath.EvalSymlinks(l)
		if err != nil {
			return fmt.Errorf("library %s: %w", l, err)
		}
		files[l] = oci.File{Source: real}
	}
	// /tmp for the agent's own temporary files; /var/lib/gpuslice and the
	// kubelet's directories are mounted from the host.
	files["/tmp/.keep"] = oci.File{Data: nil, Mode: 0o644}
	img := oci.Image{
		Name: *name, Files: files, Entrypoint: []string{entry}, User: *user,
		Labels: map[string]string{
			"org.opencontainers.image.title":   filepath.Base(*binary),
			"org.opencontainers.image.version": *version,
			"org.opencontainers.image.source":  "https://github.com/gpuslice/gpuslice",
		},
	}
	if *nvidiaEnv {
		// The NVIDIA container toolkit mounts the driver's libraries (NVML)
		// into containers that ask, as NVIDIA's device plugin image does.
		img.Env = []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=utility"}
	}
	if err := img.WriteOCIArchive(*out); err != nil {
		return err
	}
	fmt.Printf("%s: %s (%d files)\n", *out, *name, len(files))
	return nil
}

// sharedLibraries lists the libraries ldd says the binary loads, with the
// dynamic loader, as absolute paths.
func sharedLibraries(binary string) ([]string, error) {
	outb, err := exec.Command("ldd", binary).CombinedOutput()
	if err != nil {
		if bytes.Contains(outb, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", binary, err, outb)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(outb))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	if len(libs) == 0 {
		return nil, errors.New("ldd found no libraries for a dynamic binary")
	}
	return libs, nil
}
