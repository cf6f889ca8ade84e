package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// CDIKind is the CDI kind of the devices the driver hands the runtime:
// one per prepared claim, named by the claim's UID so that no name is
// ever reused (a runtime may cache specs).
const CDIKind = contract.DRACDIKind

// cdiVersion is the CDI spec version written: 0.6.0 is the oldest that
// containerd 1.7+ and CRI-O read with all the fields used here.
const cdiVersion = "0.6.0"

// CDIDeviceID is the fully qualified CDI name of a claim's device, what
// Prepare returns to the kubelet.
func CDIDeviceID(claim types.UID) string { return CDIKind + "=" + string(claim) }

// Nodes are the device nodes a container of a claim gets: the control
// nodes every CUDA process opens, and one node per GPU by minor number.
type Nodes struct {
	// DevRoot is where the host's device nodes are ("/dev").
	DevRoot string
	// Minor maps a GPU UUID to its /dev/nvidia<minor>.
	Minor map[string]int
	// MIG maps a MIG instance's UUID to its device nodes.
	MIG map[string]MIGNodes
}

// controlNodes are opened by every CUDA process, whatever its GPUs.
var controlNodes = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"}

// ErrNoMinor reports a GPU without a known device node.
var ErrNoMinor = errors.New("no device node for GPU")

// ErrBadClaimUID reports a claim UID that cannot name a CDI device or a
// file: the API server's UIDs always can, so it is not one of them.
var ErrBadClaimUID = errors.New("claim UID unusable as a CDI device name")

// checkUID accepts what CDI accepts in a device name (letters, digits and
// "_.:-", a letter or digit first), which also keeps it one file name.
func checkUID(claim types.UID) error {
	s := string(claim)
	ok := s != "" && len(s) <= 128 && isAlnum(s[0])
	for i := 0; ok && i < len(s); i++ {
		ok = isAlnum(s[i]) || strings.IndexByte("_.:-", s[i]) >= 0
	}
	if !ok {
		return fmt.Errorf("%w: %q", ErrBadClaimUID, s)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// CDISpec is the CDI spec of one claim: one device, named by the claim's
// UID, whose edits give the container the claim's environment and device
// nodes.
func CDISpec(claim types.UID, grants []Grant, n Nodes) (*cdispec.Spec, error) {
	if err := checkUID(claim); err != nil {
		return nil, err
	}
	env, err := Env(grants)
	if err != nil {
		return nil, err
	}
	edits := cdispec.ContainerEdits{}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		edits.Env = append(edits.Env, k+"="+env[k])
	}
	root := strings.TrimSuffix(n.DevRoot, "/")
	for _, name := range controlNodes {
		edits.DeviceNodes = append(edits.DeviceNodes, &cdispec.DeviceNode{Path: "/dev/" + name, HostPath: root + "/" + name, Permissions: "rw"})
	}
	node := func(name string) {
		for _, d := range edits.DeviceNodes {
			if d.Path == "/dev/"+name {
				return // two instances of one GPU: its node once
			}
		}
		edits.DeviceNodes = append(edits.DeviceNodes, &cdispec.DeviceNode{Path: "/dev/" + name, HostPath: root + "/" + name, Permissions: "rw"})
	}
	for _, g := range grants {
		if g.Parent != "" {
			m, ok := n.MIG[g.UUID]
			if !ok || m.GICap < 0 || m.CICap < 0 {
				return nil, fmt.Errorf("%w: MIG instance %s (its capability nodes are not known)", ErrNoMinor, g.UUID)
			}
			node(fmt.Sprintf("nvidia%d", m.Minor))
			node(fmt.Sprintf("nvidia-caps/nvidia-cap%d", m.GICap))
			node(fmt.Sprintf("nvidia-caps/nvidia-cap%d", m.CICap))
			continue
		}
		minor, ok := n.Minor[g.UUID]
		if !ok {
			return nil, fmt.Errorf("%w %s", ErrNoMinor, g.UUID)
		}
		node(fmt.Sprintf("nvidia%d", minor))
	}
	return &cdispec.Spec{
		Version: cdiVersion,
		Kind:    CDIKind,
		Devices: []cdispec.Device{{Name: string(claim), ContainerEdits: edits}},
	}, nil
}

// cdiFile is where a claim's spec lives in dir.
func cdiFile(dir string, claim types.UID) string {
	return filepath.Join(dir, "gpuslice-claim-"+string(claim)+".json")
}

// WriteCDISpec writes a claim's spec into dir atomically (a temporary
// file renamed over the final name), so a runtime reading the directory
// never sees half a spec, and writing it again is harmless.
func WriteCDISpec(dir string, claim types.UID, spec *cdispec.Spec) error {
	if err := checkUID(claim); err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode CDI spec of claim %s: %w", claim, err)
	}
	if err := writeAtomic(cdiFile(dir, claim), data); err != nil {
		return fmt.Errorf("write CDI spec of claim %s: %w", claim, err)
	}
	return nil
}

// RemoveCDISpec removes a claim's spec; one already gone is no error.
func RemoveCDISpec(dir string, claim types.UID) error {
	if err := checkUID(claim); err != nil {
		return err
	}
	if err := os.Remove(cdiFile(dir, claim)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove CDI spec of claim %s: %w", claim, err)
	}
	return nil
}
