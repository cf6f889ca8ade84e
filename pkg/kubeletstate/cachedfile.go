package kubeletstate

import (
	"fmt"
	"io"
	"os"
)

// maxCachedFile bounds what is read of a kubelet or driver record: a
// node's devices and claims take kilobytes.
const maxCachedFile = 64 << 20

// CachedFile reads a file that its writer replaces whole (a new file
// renamed into place), sample after sample, parsing it only when it was
// replaced. A file with the inode last parsed holds what was parsed; the
// file parsed stays open, so its inode number cannot be given to another
// file meanwhile. Size and modification time are compared too, for a
// writer that rewrites the file in place. It is not safe for concurrent
// use.
type CachedFile[T any] struct {
	path  string
	what  string
	parse func([]byte) (T, error)
	file  *os.File
	stat  os.FileInfo
	value T
}

// NewCachedFile returns a reader of path; what names the file in errors.
func NewCachedFile[T any](path, what string, parse func([]byte) (T, error)) *CachedFile[T] {
	return &CachedFile[T]{path: path, what: what, parse: parse}
}

// Read returns the file's parsed content, from memory while the file is
// the one parsed last. A missing or unparsable file is an error, never
// the last answer.
func (c *CachedFile[T]) Read() (T, error) {
	var zero T
	st, err := os.Stat(c.path)
	if err != nil {
		c.Close()
		return zero, fmt.Errorf("read %s: %w", c.what, err)
	}
	if c.file != nil && os.SameFile(st, c.stat) && st.Size() == c.stat.Size() && st.ModTime().Equal(c.stat.ModTime()) {
		return c.value, nil
	}
	c.Close()
	f, err := os.Open(c.path)
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", c.what, err)
	}
	st, err = f.Stat()
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(f, maxCachedFile))
	}
	if err != nil {
		_ = f.Close()
		return zero, fmt.Errorf("read %s: %w", c.what, err)
	}
	v, err := c.parse(data)
	if err != nil {
		_ = f.Close()
		return zero, err
	}
	c.file, c.stat, c.value = f, st, v
	return v, nil
}

// Close forgets what was read and closes the file held.
func (c *CachedFile[T]) Close() {
	if c.file != nil {
		_ = c.file.Close()
	}
	var zero T
	c.file, c.stat, c.value = nil, nil, zero
}
