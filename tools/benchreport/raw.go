package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Raw is what one run of the benchmarks printed, parsed.
type Raw struct {
	// Text is the output as printed.
	Text string
	// Bench holds each benchmark's metrics by unit: every value of every
	// line of it (-count runs it several times).
	Bench map[string]map[string][]float64
	// Lines are the non-benchmark lines that carry figures: "node ...",
	// "accuracy ...", "mutation ...", "sensitivity ...", by their first
	// word and, for keyed lines, the key (e.g. "sensitivity defaults").
	Lines map[string]map[string]string
	// Header holds the "# key: value" lines the run script writes first
	// (machine, load, date).
	Header map[string]string
}

var benchName = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?$`)

// ParseRaw parses the run's output.
func ParseRaw(r io.Reader) (*Raw, error) {
	raw := &Raw{Bench: map[string]map[string][]float64{}, Lines: map[string]map[string]string{}, Header: map[string]string{}}
	var text strings.Builder
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		text.WriteString(line + "\n")
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.HasPrefix(line, "# ") && strings.Contains(line, ": "):
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "# "), ": ")
			raw.Header[k] = v
		case benchName.MatchString(f[0]) && len(f) >= 4:
			raw.addBench(benchName.FindStringSubmatch(f[0])[1], f[2:])
		case f[0] == "node" || f[0] == "accuracy" || f[0] == "mutation" || f[0] == "sensitivity":
			raw.addKeyed(quotedFields(line))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	raw.Text = text.String()
	return raw, nil
}

// ParseFile parses a run's output kept in a file.
func ParseFile(path string) (*Raw, error) {
	f, err := os.Open(path) //nolint:gosec // the operator's own flag
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return ParseRaw(f)
}

// Sizes are the node counts of the BenchmarkClusterScale lines, in order.
func (r *Raw) Sizes() []int {
	var out []int
	for name := range r.Bench {
		var n int
		if _, err := fmt.Sscanf(name, "BenchmarkClusterScale/nodes=%d/", &n); err == nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// addBench records "value unit" pairs; a pair that does not parse ends
// the line (a comment after the figures).
func (r *Raw) addBench(name string, f []string) {
	m := r.Bench[name]
	if m == nil {
		m = map[string][]float64{}
		r.Bench[name] = m
	}
	for i := 0; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return
		}
		m[f[i+1]] = append(m[f[i+1]], v)
	}
}

// addKeyed records key=value fields of a line under its kind and key: the
// first field that is not key=value (sensitivity defaults, mutation
// open-loop) or, for accuracy lines, all of them but error_pp.
func (r *Raw) addKeyed(f []string) {
	kind, key := f[0], ""
	values := map[string]string{}
	var keyParts []string
	for _, field := range f[1:] {
		k, v, ok := strings.Cut(field, "=")
		switch {
		case !ok:
			keyParts = append(keyParts, field)
		case kind == "accuracy" && k != "error_pp":
			keyParts = append(keyParts, field)
		default:
			values[k] = strings.Trim(v, `"`)
		}
	}
	key = strings.Join(keyParts, " ")
	if r.Lines[kind] == nil {
		r.Lines[kind] = map[string]string{}
	}
	for k, v := range values {
		r.Lines[kind][strings.TrimSpace(key+" "+k)] = v
	}
}

// Value is a benchmark's metric: the median of its lines.
func (r *Raw) Value(bench, unit string) (float64, error) {
	vs := r.Bench[bench][unit]
	if len(vs) == 0 {
		return 0, fmt.Errorf("no %q for %s in the raw output", unit, bench)
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return s[len(s)/2], nil
}

// Line is a figure of a keyed line, e.g. Line("node", "scrape_p99_ms").
func (r *Raw) Line(kind, key string) (string, error) {
	v, ok := r.Lines[kind][key]
	if !ok {
		return "", fmt.Errorf("no %s line with %q in the raw output", kind, key)
	}
	return v, nil
}

// quotedFields splits a line at spaces outside double quotes.
func quotedFields(line string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
