package arch

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// maxFunctionLines bounds every function in the module's code (tests
// aside), from its signature to its closing brace.
const maxFunctionLines = 80

type function struct {
	where string
	lines int
}

// functions lists every function declared in the module's non-test Go
// files under root, longest first.
func functions(t *testing.T, root string) []function {
	t.Helper()
	var out []function
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			if fd, ok := decl.(*ast.FuncDecl); ok && fd.Body != nil {
				rel, _ := filepath.Rel(root, path)
				n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
				out = append(out, function{fmt.Sprintf("%s:%s", rel, fd.Name.Name), n})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].lines > out[j].lines })
	return out
}

// TestFunctionLength keeps functions short enough to read: the longest in
// the module is under maxFunctionLines.
func TestFunctionLength(t *testing.T) {
	fns := functions(t, "../..")
	if len(fns) < 100 {
		t.Fatalf("found %d functions: the walk missed the module", len(fns))
	}
	for _, f := range fns[:10] {
		t.Logf("%4d %s", f.lines, f.where)
	}
	for _, f := range fns {
		if f.lines >= maxFunctionLines {
			t.Errorf("%s is %d lines, want under %d: split it", f.where, f.lines, maxFunctionLines)
		}
	}
}

// TestAgentMainOnlyWires: cmd/gpu-agent/main.go builds components and
// starts them; loops (a retry, a sync, a watch) belong in the packages
// that own them.
func TestAgentMainOnlyWires(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "../../cmd/gpu-agent/main.go", nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n.(type) {
		case *ast.ForStmt, *ast.RangeStmt:
			t.Errorf("%s: a loop in main.go", fset.Position(n.Pos()))
		}
		return true
	})
}
