// Command blocks writes Prometheus TSDB blocks of synthetic history, for
// the cluster-scale benchmark (test/scale): each input series is a counter
// climbing at a constant rate or a gauge at a constant value, sampled
// every --step over [--from, --to), written one aligned 2-hour block at a
// time so memory stays that of one block. It is a module of its own so the
// agent's module never depends on Prometheus' storage.
//
// Input, one series per line: "[@<unix seconds>] counter|gauge <value>
// <labels JSON object>", the value being the counter's increase per second
// or the gauge's value; @ starts the series later than --from.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// series is one input line.
type series struct {
	from    int64 // first sample, Unix ms; 0: --from
	counter bool
	value   float64
	labels  labels.Labels
}

func main() {
	if err := run(os.Args[1:], os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "blocks:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader) error {
	fs := flag.NewFlagSet("blocks", flag.ContinueOnError)
	out := fs.String("out", "", "TSDB `directory` to write blocks into (required)")
	from := fs.Int64("from", 0, "first sample, Unix seconds (required)")
	to := fs.Int64("to", 0, "end of the history, Unix seconds, exclusive (required)")
	step := fs.Duration("step", 30*time.Second, "time between samples: the scrape interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *from <= 0 || *to <= *from || *step <= 0 {
		return errors.New("--out, --from < --to and a positive --step are required")
	}
	ss, err := read(in)
	if err != nil {
		return err
	}
	const block = 2 * time.Hour
	start, end, stepMS := *from*1000, *to*1000, step.Milliseconds()
	total := 0
	for lo := start - start%block.Milliseconds(); lo < end; lo += block.Milliseconds() {
		hi := min(lo+block.Milliseconds(), end)
		first := max(lo, start)
		// Samples on the step grid from start.
		if r := (first - start) % stepMS; r != 0 {
			first += stepMS - r
		}
		if first >= hi {
			continue
		}
		n, err := writeBlock(*out, ss, start, first, hi, stepMS)
		if err != nil {
			return err
		}
		total += n
	}
	fmt.Printf("%d series, %d samples\n", len(ss), total)
	return nil
}

// writeBlock writes the samples in [first, hi) of every series as one
// block.
func writeBlock(dir string, ss []series, start, first, hi, stepMS int64) (int, error) {
	// The head accepts samples back to half its range before the newest
	// committed one: twice the block, so every series' samples from the
	// block's start are accepted after others were committed.
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, 4*time.Hour.Milliseconds())
	if err != nil {
		return 0, err
	}
	defer w.Close()
	ctx := context.Background()
	n := 0
	app := w.Appender(ctx)
	for i, s := range ss {
		var ref storage.SeriesRef
		t0 := first
		if s.from > first { // the first grid point at or after its start
			t0 += (s.from - first + stepMS - 1) / stepMS * stepMS
		}
		for t := t0; t < hi; t += stepMS {
			v := s.value
			if s.counter {
				v *= float64(t-start) / 1000
			}
			if ref, err = app.Append(ref, s.labels, t, v); err != nil {
				return 0, fmt.Errorf("series %s: %w", s.labels, err)
			}
			n++
		}
		if i%5000 == 4999 { // bound the appender's pending samples
			if err := app.Commit(); err != nil {
				return 0, err
			}
			app = w.Appender(ctx)
		}
	}
	if err := app.Commit(); err != nil {
		return 0, err
	}
	if _, err := w.Flush(ctx); err != nil {
		return 0, err
	}
	return n, nil
}

// read parses the input series.
func read(in io.Reader) ([]series, error) {
	var ss []series
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text, from := sc.Text(), int64(0)
		if strings.HasPrefix(text, "@") {
			at, rest, _ := strings.Cut(text[1:], " ")
			sec, err := strconv.ParseInt(at, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: start: %w", line, err)
			}
			text, from = rest, sec*1000
		}
		kind, rest, ok1 := strings.Cut(text, " ")
		val, js, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 || (kind != "counter" && kind != "gauge") {
			return nil, fmt.Errorf("line %d: want \"counter|gauge <value> <labels JSON>\"", line)
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		var m map[string]string
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if m["__name__"] == "" {
			return nil, fmt.Errorf("line %d: no __name__", line)
		}
		ss = append(ss, series{from: from, counter: kind == "counter", value: v, labels: labels.FromMap(m)})
	}
	return ss, sc.Err()
}
