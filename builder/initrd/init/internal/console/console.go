// Package console prints /init's progress and failure lines where a person
// sees them (the console) and where the journal finds them (/dev/kmsg).
package console

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// Prefix starts every line /init prints.
const Prefix = "berth-init: "

// Kernel log levels used for the /dev/kmsg copy.
const (
	kmsgErr   = 3
	kmsgDebug = 7 // below the default console loglevel: recorded, not echoed
)

// Logger writes lines to the console and to the kernel log.
type Logger struct {
	mu      sync.Mutex
	console io.Writer
	kmsg    io.Writer
}

// New logs to console (stdout before /dev exists) and, if not nil, kmsg.
func New(console, kmsg io.Writer) *Logger { return &Logger{console: console, kmsg: kmsg} }

// Attach switches to a better console and kmsg once /dev is mounted; a nil
// argument keeps the current writer.
func (l *Logger) Attach(console, kmsg io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if console != nil {
		l.console = console
	}
	if kmsg != nil {
		l.kmsg = kmsg
	}
}

// Infof prints a progress line.
func (l *Logger) Infof(format string, args ...any) {
	l.line(false, fmt.Sprintf(format, args...))
}

// Fatal prints the single failure line: "berth-init: FATAL: what: why".
func (l *Logger) Fatal(what string, why error) {
	l.line(true, FatalLine(what, why))
}

// FatalLine renders the failure line without the prefix, on one line.
func FatalLine(what string, why error) string {
	msg := "FATAL: " + what
	if why != nil {
		msg += ": " + why.Error()
	}
	return msg
}

func (l *Logger) line(fatal bool, msg string) {
	msg = strings.ReplaceAll(strings.TrimRight(msg, "\n"), "\n", " ")
	l.mu.Lock()
	defer l.mu.Unlock()
	_, consoleErr := io.WriteString(l.console, Prefix+msg+"\n")
	if l.kmsg == nil {
		return
	}
	// The console already shows the line: the kernel log copy is at debug
	// level so a serial console does not print it twice. If the console
	// write failed, a fatal line goes to the kernel log at error level,
	// which the kernel prints on every console.
	level := kmsgDebug
	if fatal && consoleErr != nil {
		level = kmsgErr
	}
	fmt.Fprintf(l.kmsg, "<%d>%s%s\n", level, Prefix, msg)
}

// Stdout is the console before /dev is mounted: the kernel opened
// /dev/console of the initramfs as fds 0-2 if it exists.
func Stdout() io.Writer { return os.Stdout }
