package deviceplugin

import (
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		mod  func(*Options)
		want string
	}{
		"defaults":               {mod: func(*Options) {}},
		"resource without slash": {mod: func(o *Options) { o.ResourceName = "vgpu" }, want: "<domain>/<name>"},
		"resource in k8s domain": {mod: func(o *Options) { o.ResourceName = "kubernetes.io/vgpu" }, want: "outside kubernetes.io"},
		"resource bad char":      {mod: func(o *Options) { o.ResourceName = "nvidia.com/v gpu" }, want: "character"},
		"relative dir":           {mod: func(o *Options) { o.PluginDir = "plugins" }, want: "absolute"},
		"socket with slash":      {mod: func(o *Options) { o.SocketName = "a/b.sock" }, want: "plain file name"},
		"socket named kubelet":   {mod: func(o *Options) { o.SocketName = "kubelet.sock" }, want: "other than kubelet.sock"},
		"socket path too long":   {mod: func(o *Options) { o.PluginDir = "/" + strings.Repeat("d", 120) }, want: "longer than 107"},
		"bad placement":          {mod: func(o *Options) { o.Placement = "random" }, want: "placement"},
		"relative dev root":      {mod: func(o *Options) { o.DevRoot = "dev" }, want: "dev root"},
		"dev root unused":        {mod: func(o *Options) { o.DeviceSpecs = false; o.DevRoot = "" }},
		"bad cdi kind":           {mod: func(o *Options) { o.CDI.Enabled = true; o.CDI.Kind = "gpu" }, want: "CDI kind"},
		"bad cdi strategy":       {mod: func(o *Options) { o.CDI.Enabled = true; o.CDI.NameStrategy = "serial" }, want: "name strategy"},
		"relative mps dir":       {mod: func(o *Options) { o.MPS.Enabled = true; o.MPS.PipeDirectory = "mps" }, want: "MPS pipe"},
		"zero retry":             {mod: func(o *Options) { o.RegisterRetry = 0 }, want: "retry"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			o := DefaultOptions()
			tc.mod(&o)
			err := o.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
