package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// maxLineBytes splits longer lines so one chatty process cannot make the
// shim buffer without bound.
const maxLineBytes = 16 << 10

// logFile writes "RFC3339Nano stream text" lines and rotates at maxBytes,
// keeping one old file (path.1).
type logFile struct {
	mu       sync.Mutex
	path     string
	maxBytes int64
	f        *os.File
	size     int64
	err      error // first write error, reported once at exit
}

func openLogFile(path string, maxBytes int64) (*logFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open container log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open container log: %w", err)
	}
	return &logFile{path: path, maxBytes: maxBytes, f: f, size: st.Size()}, nil
}

func (l *logFile) writeLine(stream string, text []byte) {
	line := make([]byte, 0, len(text)+48)
	line = time.Now().UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, ' ')
	line = append(line, stream...)
	line = append(line, ' ')
	line = append(line, text...)
	line = append(line, '\n')

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if l.size > 0 && l.size+int64(len(line)) > l.maxBytes {
		l.rotate()
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err != nil && l.err == nil {
		l.err = err
	}
}

// rotate keeps exactly one old file; a reader holding the old one open keeps
// reading it to its end.
func (l *logFile) rotate() {
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		if l.err == nil {
			l.err = err
		}
		return
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		if l.err == nil {
			l.err = err
		}
		return
	}
	l.f.Close()
	l.f, l.size = f, 0
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return l.err
	}
	err := l.f.Close()
	l.f = nil
	return errors.Join(l.err, err)
}

// pump copies r line by line into the log until EOF.
func (l *logFile) pump(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
			}
			l.writeLine(stream, line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
