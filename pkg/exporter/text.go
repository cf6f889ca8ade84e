package exporter

import (
	"math"
	"strconv"
	"strings"
)

// family is one metric family's name, type and help.
type family struct {
	name, typ, help string
}

// textWriter appends the Prometheus text format (0.0.4) to a buffer. A
// family's HELP and TYPE lines are written with its first sample, so a
// family without samples is left out, as client_golang leaves it out.
type textWriter struct {
	b       []byte
	cur     *family
	written bool // cur's HELP and TYPE lines are written
}

// start begins a family.
func (w *textWriter) start(f *family) { w.cur, w.written = f, false }

// sample writes one sample of the current family; labels alternate names
// and values.
func (w *textWriter) sample(v float64, labels ...string) {
	w.sampleNamed(w.header(), "", v, labels...)
}

// header writes the current family's HELP and TYPE lines if they are not
// written yet, and returns its name.
func (w *textWriter) header() string {
	f := w.cur
	if !w.written {
		w.b = append(w.b, "# HELP "...)
		w.b = append(w.b, f.name...)
		w.b = append(w.b, ' ')
		w.b = appendEscaped(w.b, f.help, false)
		w.b = append(w.b, '\n')
		w.b = append(w.b, "# TYPE "...)
		w.b = append(w.b, f.name...)
		w.b = append(w.b, ' ')
		w.b = append(w.b, f.typ...)
		w.b = append(w.b, '\n')
		w.written = true
	}
	return f.name
}

// sampleSet writes one sample of the current family with a label set
// rendered by appendLabels.
func (w *textWriter) sampleSet(v float64, set []byte) {
	w.b = append(w.b, w.header()...)
	w.b = append(w.b, set...)
	w.b = append(w.b, ' ')
	w.b = appendFloat(w.b, v)
	w.b = append(w.b, '\n')
}

// appendLabels renders {name="value",...} with the names sorted, as
// client_golang writes them; labels alternate names and values.
func appendLabels(b []byte, labels ...string) []byte {
	var order [16]int // the pairs' indices, sorted by name
	n := min(len(labels)/2, len(order))
	for i := range n {
		j := i
		for ; j > 0 && labels[2*order[j-1]] > labels[2*i]; j-- {
			order[j] = order[j-1]
		}
		order[j] = i
	}
	b = append(b, '{')
	for k, i := range order[:n] {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, labels[2*i]...)
		b = append(b, `="`...)
		b = appendEscaped(b, labels[2*i+1], true)
		b = append(b, '"')
	}
	return append(b, '}')
}

// sampleNamed writes name+suffix{labels} v.
func (w *textWriter) sampleNamed(name, suffix string, v float64, labels ...string) {
	w.b = append(w.b, name...)
	w.b = append(w.b, suffix...)
	if len(labels) > 0 {
		w.b = appendLabels(w.b, labels...)
	}
	w.b = append(w.b, ' ')
	w.b = appendFloat(w.b, v)
	w.b = append(w.b, '\n')
}

// histogram writes a histogram's buckets (cumulative counts for the upper
// bounds), sum and count.
func (w *textWriter) histogram(bounds []float64, counts []uint64, count uint64, sum float64) {
	name := w.header()
	var le [32]byte
	for i, b := range bounds {
		var n uint64
		if i < len(counts) {
			n = counts[i]
		}
		w.sampleNamed(name, "_bucket", float64(n), "le", string(appendFloat(le[:0], b)))
	}
	w.sampleNamed(name, "_bucket", float64(count), "le", "+Inf")
	w.sampleNamed(name, "_sum", sum)
	w.sampleNamed(name, "_count", float64(count))
}

// appendFloat writes v as the text format does.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// appendEscaped escapes a backslash and a line feed, and in label values a
// double quote too.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !strings.ContainsAny(s, "\\\n\"") {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}
