package console

import (
	"bytes"
	"errors"
	"testing"
)

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no console") }

func TestLines(t *testing.T) {
	var con, kmsg bytes.Buffer
	l := New(&con, &kmsg)
	l.Infof("loaded %d modules", 3)
	l.Fatal("mount slot /dev/vda2", errors.New("invalid argument\nsecond line"))
	wantCon := "berth-init: loaded 3 modules\nberth-init: FATAL: mount slot /dev/vda2: invalid argument second line\n"
	if con.String() != wantCon {
		t.Errorf("console got %q, want %q", con.String(), wantCon)
	}
	wantKmsg := "<7>berth-init: loaded 3 modules\n<7>berth-init: FATAL: mount slot /dev/vda2: invalid argument second line\n"
	if kmsg.String() != wantKmsg {
		t.Errorf("kmsg got %q, want %q", kmsg.String(), wantKmsg)
	}
}

func TestFatalReachesKernelLogWhenConsoleFails(t *testing.T) {
	var kmsg bytes.Buffer
	l := New(failingWriter{}, &kmsg)
	l.Infof("progress")
	l.Fatal("find slot", errors.New("timeout"))
	want := "<7>berth-init: progress\n<3>berth-init: FATAL: find slot: timeout\n"
	if kmsg.String() != want {
		t.Errorf("kmsg got %q, want %q", kmsg.String(), want)
	}
}
