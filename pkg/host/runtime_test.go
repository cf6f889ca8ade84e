package host

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gpuslice/gpuslice/pkg/node"
)

const (
	uidA = "aaaaaaaa-0000-4000-8000-000000000001"
	uidB = "bbbbbbbb-0000-4000-8000-000000000002"
)

func TestParseBundleConfig(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		json    string
		runtime string
		want    node.RuntimeContainer
		wantErr bool
	}{
		"containerd container": {json: `{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main","io.kubernetes.cri.sandbox-uid":"` + strings.ToUpper(uidA) + `","io.kubernetes.cri.sandbox-name":"train","io.kubernetes.cri.sandbox-namespace":"ml"}}`,
			want: node.RuntimeContainer{Name: "main", PodUID: uidA, PodName: "train", PodNamespace: "ml"}},
		"containerd sandbox": {json: `{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"train","io.kubernetes.cri.sandbox-namespace":"ml"}}`,
			want: node.RuntimeContainer{Sandbox: true, PodName: "train", PodNamespace: "ml"}},
		"cri-o container": {runtime: RuntimeCRIO, json: `{"annotations":{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.container.name":"nb","io.kubernetes.pod.uid":"` + uidB + `","io.kubernetes.pod.name":"nb","io.kubernetes.pod.namespace":"lab"}}`,
			want: node.RuntimeContainer{Name: "nb", PodUID: uidB, PodName: "nb", PodNamespace: "lab"}},
		"not kubernetes":         {json: `{"annotations":{"org.opencontainers.image.ref.name":"x"}}`, wantErr: true},
		"container without name": {json: `{"annotations":{"io.kubernetes.cri.container-type":"container"}}`, wantErr: true},
		"pod uid not a uid":      {json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"m","io.kubernetes.cri.sandbox-uid":"../x"}}`, wantErr: true},
		"not json":               {json: `{`, wantErr: true},
		// CRI-O copies the pod's annotations into the sandbox's bundle: a
		// tenant's pod naming itself a container of a victim's pod by
		// containerd's keys is still CRI-O's sandbox of its own pod.
		"cri-o sandbox with containerd keys from the pod's annotations": {runtime: RuntimeCRIO,
			json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main","io.kubernetes.cri.sandbox-uid":"` + uidA + `","io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.uid":"` + uidB + `","io.kubernetes.pod.name":"evil","io.kubernetes.pod.namespace":"lab"}}`,
			want: node.RuntimeContainer{Sandbox: true, PodUID: uidB, PodName: "evil", PodNamespace: "lab"}},
		"containerd keys alone in a cri-o bundle": {runtime: RuntimeCRIO, wantErr: true,
			json: `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`},
		"cri-o keys alone in a containerd bundle": {wantErr: true,
			json: `{"annotations":{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.container.name":"nb"}}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rt := tc.runtime
			if rt == "" {
				rt = RuntimeContainerd
			}
			got, err := ParseBundleConfig([]byte(tc.json), rt)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseBundleConfig() = %+v, %v; want error %v", got, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestRuntimeStateReadsBundles(t *testing.T) {
	t.Parallel()
	containerd, crio := t.TempDir(), t.TempDir()
	idA := strings.Repeat("a", 64)
	idB := strings.Repeat("b", 64)
	write := func(path, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(containerd, idA, "config.json"), `{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`)
	write(filepath.Join(crio, idB, "userdata", "config.json"), `{"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox"}}`)
	r := NewRuntimeState([]string{containerd, crio})
	if c, ok := r.Lookup(idA); !ok || c.Name != "main" {
		t.Errorf("containerd bundle: %+v, %v", c, ok)
	}
	if c, ok := r.Lookup(idB); !ok || !c.Sandbox {
		t.Errorf("cri-o bundle: %+v, %v", c, ok)
	}
	for _, bad := range []string{strings.Repeat("c", 64), "../" + idA, idA[:63]} {
		if c, ok := r.Lookup(bad); ok {
			t.Errorf("Lookup(%q) = %+v", bad, c)
		}
	}
	// Remembered after the runtime removes the bundle, until forgotten.
	if err := os.RemoveAll(filepath.Join(containerd, idA)); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup(idA); !ok {
		t.Error("a removed bundle was forgotten before Forget")
	}
	r.Forget(func(string) bool { return false })
	if _, ok := r.Lookup(idA); ok {
		t.Error("Forget kept a container")
	}
}

func FuzzParseBundleConfig(f *testing.F) {
	f.Add([]byte(`{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"main"}}`))
	f.Add([]byte(`{"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.uid":"` + uidA + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, rt := range []string{RuntimeContainerd, RuntimeCRIO} {
			fuzzBundle(t, data, rt)
		}
	})
}

func fuzzBundle(t *testing.T, data []byte, runtime string) {
	t.Helper()
	c, err := ParseBundleConfig(data, runtime)
	if err != nil {
		return
	}
	if c.Sandbox == (c.Name != "") {
		t.Fatalf("a record that is both or neither a sandbox and a named container: %+v", c)
	}
	if c.PodUID != "" {
		if u, ok := canonicalUID(c.PodUID); !ok || u != c.PodUID {
			t.Fatalf("pod UID %q is not canonical", c.PodUID)
		}
	}
}
