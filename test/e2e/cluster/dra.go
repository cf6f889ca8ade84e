package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/gpuslice/gpuslice/test/apiserver"
)

// ContainerdHasCDI reports whether the containerd on PATH injects CDI
// devices, which DRA needs: containerd 2.x does (test/e2e/build-containerd.sh
// builds it), Debian 12's 1.6 does not. It returns the version it found.
func ContainerdHasCDI() (bool, string) {
	out, err := exec.Command("containerd", "--version").Output()
	if err != nil {
		return false, ""
	}
	m := regexp.MustCompile(`\bv?(\d+)\.(\d+)\.(\d+)`).FindStringSubmatch(string(out))
	if m == nil {
		return false, string(out)
	}
	major, _ := strconv.Atoi(m[1])
	return major >= 2, m[0]
}

// draSetup prepares what DRA mode needs before containerd starts: the CDI
// spec directory containerd reads.
func (c *Cluster) draSetup() error {
	c.CDIDir = filepath.Join(c.Dir, "cdi")
	return os.MkdirAll(c.CDIDir, 0o755) //nolint:gosec // containerd reads it
}

// containerdCDI is the containerd config's CDI lines, under the CRI
// plugin's section, in DRA mode.
func (c *Cluster) containerdCDI() string {
	if c.CDIDir == "" {
		return ""
	}
	return fmt.Sprintf("  enable_cdi = true\n  cdi_spec_dirs = [%q]\n", c.CDIDir)
}

// draAgentArgs are the agent's flags for DRA mode.
func (c *Cluster) draAgentArgs() []string {
	if c.draBin == "" {
		return nil
	}
	c.PreparedClaims = filepath.Join(c.Dir, "gpuslice", "dra-prepared.json")
	return []string{"--dra", "--dra-prepared-claims=" + c.PreparedClaims}
}

// StartDRADriver starts gpu-dra-driver (again) on the fake GPU node, with
// the agent's slicing.
func (c *Cluster) StartDRADriver() error {
	if err := os.MkdirAll(filepath.Dir(c.PreparedClaims), 0o750); err != nil {
		return err
	}
	args := append([]string{
		"--gpu-backend=fake", "--fake-config=" + c.FakeConfig, "--kubeconfig=" + c.API.Kubeconfig, "--node-name=" + NodeName,
		"--kubelet-registrar-dir=" + filepath.Join(c.KubeletRoot, "plugins_registry"),
		"--kubelet-plugin-dir=" + filepath.Join(c.KubeletRoot, "plugins", "gpu.gpuslice.io"),
		"--cdi-dir=" + c.CDIDir, "--dra-prepared-claims=" + c.PreparedClaims, "--dev-root=" + filepath.Join(c.Dir, "dev"), "--log-level=debug", "--log-format=json",
		"--pod-resources-socket=" + c.PodResourcesSocket,
	}, c.draArgs...)
	var err error
	c.draDriver, err = apiserver.StartProcess("gpu-dra-driver", "nsenter", append([]string{"--mount=" + c.MountNS, "--", c.draBin}, args...)...)
	if err != nil {
		return err
	}
	c.record(c.draDriver)
	sock := filepath.Join(c.KubeletRoot, "plugins", "gpu.gpuslice.io", "dra.sock")
	return wait(context.Background(), 30*time.Second, "gpu-dra-driver socket", func() error {
		if c.draDriver.Exited() {
			return fmt.Errorf("gpu-dra-driver exited: %s", c.draDriver.Logs.Tail(2000))
		}
		_, err := os.Stat(sock)
		return err
	})
}

// RestartDRADriver stops the driver and starts it again with extra flags
// after its usual ones (none: as the cluster started it).
func (c *Cluster) RestartDRADriver(extra ...string) error {
	c.StopDRADriver()
	saved := c.draArgs
	c.draArgs = append(append([]string(nil), saved...), extra...)
	defer func() { c.draArgs = saved }()
	return c.StartDRADriver()
}

// StopDRADriver stops the driver with SIGTERM; KillDRADriver with SIGKILL.
func (c *Cluster) StopDRADriver() {
	if c.draDriver != nil {
		c.draDriver.Stop()
		c.draDriver = nil
	}
}

// KillDRADriver kills the driver with SIGKILL.
func (c *Cluster) KillDRADriver() {
	if c.draDriver != nil {
		c.draDriver.Kill()
		c.draDriver = nil
	}
}

// DRADriverLogs returns the tail of the driver's output.
func (c *Cluster) DRADriverLogs() string {
	if c.draDriver == nil {
		return ""
	}
	return c.draDriver.Logs.Tail(4000)
}

// DRA reports whether the cluster runs in DRA mode.
func (c *Cluster) DRA() bool { return c.draBin != "" }
