package payload

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// verifyingReader streams one part of a payload and checks it against the
// signed manifest as it goes. It never hands out bytes past the signed
// size, and it returns io.EOF only when size and sha256 both match: a
// caller that reads until io.EOF has read exactly the signed content.
type verifyingReader struct {
	name string
	want Blob
	r    io.Reader
	c    io.Closer
	h    hash.Hash
	n    int64
	err  error // sticky: once failed, always failed
}

func newVerifyingReader(name string, want Blob, rc io.ReadCloser) *verifyingReader {
	return &verifyingReader{
		name: name,
		want: want,
		// One byte past the signed size is enough to notice extra data
		// without reading an unbounded stream.
		r: io.LimitReader(rc, want.Size+1),
		c: rc,
		h: sha256.New(),
	}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	if over := v.n + int64(n) - v.want.Size; over > 0 {
		n -= int(over)
		v.err = fmt.Errorf("payload %s: more than the %d bytes the signed manifest says: refusing it", v.name, v.want.Size)
	}
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.err != nil {
		return n, v.err
	}
	if errors.Is(err, io.EOF) {
		v.err = v.check()
		return n, v.err
	}
	if err != nil {
		v.err = fmt.Errorf("payload %s: read: %w", v.name, err)
		return n, v.err
	}
	return n, nil
}

func (v *verifyingReader) check() error {
	if v.n != v.want.Size {
		return fmt.Errorf("payload %s: %d bytes, but the signed manifest says %d: refusing it", v.name, v.n, v.want.Size)
	}
	if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.SHA256 {
		return fmt.Errorf("payload %s: sha256 %s, but the signed manifest says %s: the content was altered, refusing it", v.name, got, v.want.SHA256)
	}
	return io.EOF
}

func (v *verifyingReader) Close() error {
	return v.c.Close()
}
