//go:build nofakegpu

package gpubackend

import "errors"

// FakeBuiltIn reports whether this binary has the fake GPU node.
const FakeBuiltIn = false

// errNoFake is what a binary built without the fake GPU node answers.
var errNoFake = errors.New("--gpu-backend=fake: this binary was built without the fake GPU node (the nofakegpu build tag, as the shipped image is); use --gpu-backend=nvml, or an image built with make image FAKE_GPU=1")

func openFake(string) (Opened, error) { return Opened{}, errNoFake }

func checkFake(string) error { return errNoFake }
