package arch

import (
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// pureDoc is how a package says it does no I/O.
var pureDoc = regexp.MustCompile(`(?i)\bit is pure\b|\bdoes no I/O\b|\bno I/O\b`)

// ioImports are the imports that do I/O (or reach the network, the
// kernel or a cluster): a package documented as pure imports none.
var ioImports = []string{"os", "os/exec", "os/signal", "net", "net/http", "syscall", "golang.org/x/sys/unix",
	"google.golang.org/grpc", "k8s.io/client-go/kubernetes", "k8s.io/client-go/rest", "github.com/NVIDIA/go-nvml/pkg/nvml"}

// core are the packages pkg/node may import: the model's own vocabulary.
var core = []string{"pkg/contract", "pkg/vgpu", "pkg/gpudev"}

type listed struct {
	dir     string
	imports []string
}

func packages(t *testing.T) map[string]listed {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{.Dir}}|{{join .Imports \" \"}}", "./api/...", "./pkg/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]listed{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 3)
		pkgs[strings.TrimPrefix(f[0], module)] = listed{dir: f[1], imports: strings.Fields(f[2])}
	}
	return pkgs
}

// packageDoc is the package comment of the package in dir.
func packageDoc(t *testing.T, dir string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var doc strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if file.Doc != nil {
			doc.WriteString(file.Doc.Text())
		}
	}
	return doc.String()
}

// TestPurePackages: a package whose doc says it is pure (does no I/O)
// imports nothing that does I/O, and only project packages that are pure
// too; pkg/node, the model below every edge and loop, is one of them and
// imports only the core vocabulary. The review found pkg/node linking
// go-nvml and gRPC, and pkg/dra calling itself pure while writing files.
func TestPurePackages(t *testing.T) {
	pkgs := packages(t)
	pure := map[string]bool{}
	for name, p := range pkgs {
		pure[name] = pureDoc.MatchString(packageDoc(t, p.dir))
	}
	for _, must := range append([]string{"pkg/node"}, core...) {
		if !pure[must] {
			t.Errorf("%s is not documented as pure (no I/O)", must)
		}
	}
	for name, p := range pkgs {
		if !pure[name] {
			continue
		}
		for _, imp := range p.imports {
			if slices.Contains(ioImports, imp) {
				t.Errorf("%s is documented as pure and imports %s", name, imp)
			}
			if rel, ok := strings.CutPrefix(imp, module); ok && !pure[rel] {
				t.Errorf("%s is documented as pure and imports %s, which is not", name, rel)
			}
		}
	}
	for _, imp := range pkgs["pkg/node"].imports {
		if rel, ok := strings.CutPrefix(imp, module); ok && !slices.Contains(core, rel) {
			t.Errorf("pkg/node imports %s: the node model sits below every edge and loop package", rel)
		}
	}
}
