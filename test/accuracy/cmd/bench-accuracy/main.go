// Command bench-accuracy is the compute-accuracy gate: it runs the
// throttle against the GPU model for every cell of the matrix and for each
// deliberately broken controller, then the turns on a shared MIG instance
// for the same cells and each broken variant of them, prints one line
// each, and exits non-zero when a real cell (within the turns' claim, on
// MIG) misses its target by more than 2 percentage points or a broken
// variant goes undetected.
//
//	go run ./test/accuracy/cmd/bench-accuracy [--sensitivity]
//
// --sensitivity also prints, for each physical parameter changed from the
// model's defaults, the worst cell of the real controller.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/gpuslice/gpuslice/test/accuracy"
)

func main() {
	sensitivity := flag.Bool("sensitivity", false, "also print the worst cell under other physical parameters")
	flag.Parse()
	ok, err := accuracy.Gate(os.Stdout, accuracy.Cells(), accuracy.DefaultOptions())
	if err == nil {
		var migOK bool
		migOK, err = accuracy.GateMIG(os.Stdout, accuracy.Cells(), accuracy.DefaultOptions())
		ok = ok && migOK
	}
	if err == nil && *sensitivity {
		err = accuracy.Sensitivity(os.Stdout, accuracy.Cells())
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "bench-accuracy: %v\n", err)
		os.Exit(2)
	case !ok:
		fmt.Println("bench-accuracy: FAIL: a cell missed by more than 2.0 pp or a mutation went undetected (whole GPUs or MIG)")
		os.Exit(1)
	}
	fmt.Println("bench-accuracy: PASS")
}
