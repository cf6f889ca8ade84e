package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// figureMarker ties the number just before it to the generated page's raw
// output: a benchmark's unit (scaled), or a keyed line's value.
//
//	p50 4.7 ms<!-- figure BenchmarkReregisterAfterKubeletRestart p50-ms -->
//	1.2 ms<!-- figure BenchmarkDriverLimitOnCgroupCreation max-us *0.001 -->
//	1.13 points<!-- figure line sensitivity "defaults max_error_pp" -->
var figureMarker = regexp.MustCompile(`<!-- figure (?:line (\S+) "([^"]+)"|(\S+) (\S+)(?: \*([0-9.]+))?) -->`)

// number is a figure as written: digits with an optional fraction.
var number = regexp.MustCompile(`[0-9]+(?:\.[0-9]+)?`)

// benchFigure is a number with a unit a benchmark measures.
var benchFigure = regexp.MustCompile(`[0-9]+(?:\.[0-9]+)? ?(?:ms|µs|ns|MiB|GiB)\b|[0-9]+(?:\.[0-9]+)? points\b`)

// docsWithFigures are the pages a figure from the benchmarks may appear in.
func docsWithFigures(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	out := []string{"../../README.md", "../../deployments/helm/gpuslice/README.md"}
	for _, d := range docs {
		if !strings.HasSuffix(d, "/benchmarks.md") && !strings.HasSuffix(d, "/gpu-validation.md") {
			out = append(out, d)
		}
	}
	return out
}

// TestDocFiguresAreThePages: every figure in the README and docs that is
// marked as a benchmark's reads what the committed raw output
// (docs/benchmarks-raw.txt, the page's source) says, to the precision it
// is written with; and a line that cites the benchmarks page with a
// measured figure must mark it. A figure that no longer reproduces fails
// here when the page is regenerated.
func TestDocFiguresAreThePages(t *testing.T) {
	raw := parse(t, "../../docs/benchmarks-raw.txt")
	marked := 0
	for _, path := range docsWithFigures(t) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(data), "\n") {
			where := fmt.Sprintf("%s:%d", strings.TrimPrefix(path, "../../"), n+1)
			marks := figureMarker.FindAllStringSubmatchIndex(line, -1)
			if len(marks) == 0 && strings.Contains(line, "benchmarks.md") && benchFigure.MatchString(line) {
				t.Errorf("%s cites the benchmarks with a figure and no <!-- figure ... --> marker: %q", where, line)
			}
			for _, m := range marks {
				marked++
				if err := checkFigure(raw, line, m); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			}
		}
	}
	if marked == 0 {
		t.Error("no figure is marked: the check checks nothing")
	}
}

// checkFigure compares the number written just before the marker at m
// with the raw output's value.
func checkFigure(raw *Raw, line string, m []int) error {
	before := line[:m[0]]
	nums := number.FindAllString(before, -1)
	if len(nums) == 0 {
		return fmt.Errorf("a marker with no figure before it: %q", line[m[0]:m[1]])
	}
	written := nums[len(nums)-1]
	var want float64
	var err error
	sub := func(i int) string {
		if m[2*i] < 0 {
			return ""
		}
		return line[m[2*i]:m[2*i+1]]
	}
	if kind := sub(1); kind != "" {
		var v string
		if v, err = raw.Line(kind, sub(2)); err == nil {
			want, err = strconv.ParseFloat(v, 64)
		}
	} else {
		want, err = raw.Value(sub(3), sub(4))
		if s := sub(5); s != "" && err == nil {
			scale, _ := strconv.ParseFloat(s, 64)
			want *= scale
		}
	}
	if err != nil {
		return err
	}
	decimals := 0
	if i := strings.IndexByte(written, '.'); i >= 0 {
		decimals = len(written) - i - 1
	}
	if got := strconv.FormatFloat(want, 'f', decimals, 64); got != written && !closeEnough(written, want, decimals) {
		return fmt.Errorf("the doc says %s, the benchmarks say %s (%s)", written, got, line[m[0]:m[1]])
	}
	return nil
}

// closeEnough accepts a figure written to fewer significant digits than
// decimals allow (4.7 for 4.65 is rounding, not drift).
func closeEnough(written string, want float64, decimals int) bool {
	w, err := strconv.ParseFloat(written, 64)
	return err == nil && math.Abs(w-want) <= 0.5*math.Pow(10, -float64(decimals))+1e-9
}
