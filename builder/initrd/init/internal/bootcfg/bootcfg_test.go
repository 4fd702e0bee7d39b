package bootcfg

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/updater/layout"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(` console=ttyS0  foo="a b" "x y"=1 ro` + "\n")
	want := []string{"console=ttyS0", "foo=a b", "x y=1", "ro"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SplitCmdline = %q, want %q", got, want)
	}
}

func TestParseCmdline(t *testing.T) {
	cfg := Defaults()
	cmdline := "BOOT_IMAGE=/x console=ttyS0 ro berth.root=PARTUUID=0fc63daf-8483-4772-8e79-3d69d8477de4 " +
		"berth.slot=B berth.fstype=erofs berth.onfail=halt berth.rootwait=7 init=/lib/systemd/systemd"
	if err := ParseCmdline(cmdline, &cfg); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Root:     RootSpec{Kind: RootByPartUUID, Value: "0FC63DAF-8483-4772-8E79-3D69D8477DE4"},
		Slot:     layout.SlotB,
		FSType:   "erofs",
		OnFail:   OnFailHalt,
		RootWait: 7 * time.Second,
		Init:     "/lib/systemd/systemd",
	}
	if cfg != want {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseCmdlineDefaultsAndLastWins(t *testing.T) {
	cfg := Defaults()
	if err := ParseCmdline("berth.root=PARTLABEL=nope berth.root=PARTLABEL=BERTH-A", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Root != (RootSpec{Kind: RootByPartLabel, Value: "BERTH-A"}) {
		t.Errorf("root = %v, want the last one", cfg.Root)
	}
	if cfg.FSType != "squashfs" || cfg.OnFail != OnFailReboot || cfg.RootWait != 30*time.Second || cfg.Init != "/sbin/init" {
		t.Errorf("defaults not kept: %+v", cfg)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	for cmdline, wantErr := range map[string]string{
		"console=ttyS0":                              "no berth.root",
		"berth.root=/dev/vda2":                       "want PARTUUID",
		"berth.root=UUID=1234":                       "unknown kind",
		"berth.root=PARTUUID=not-a-uuid":             "is not a UUID",
		"berth.root=PARTLABEL=A berth.slot=c":        "unknown slot",
		"berth.root=PARTLABEL=A berth.onfail=panic":  "unknown onfail",
		"berth.root=PARTLABEL=A berth.rootwait=-1":   "not a number of seconds",
		"berth.root=PARTLABEL=A berth.rootwait=soon": "not a number of seconds",
		"berth.root=PARTLABEL=A init=sbin/init":      "not an absolute path",
		"berth.root=PARTLABEL=A berth.fstype=":       "empty filesystem type",
	} {
		cfg := Defaults()
		err := ParseCmdline(cmdline, &cfg)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ParseCmdline(%q) error = %v, want it to contain %q", cmdline, err, wantErr)
		}
	}
}

func TestApplyOnFailDespiteOtherErrors(t *testing.T) {
	cfg := Defaults()
	cmdline := "berth.root=garbage berth.onfail=shell"
	if err := ApplyOnFail(cmdline, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OnFail != OnFailShell {
		t.Fatalf("onfail = %q, want shell", cfg.OnFail)
	}
	if err := ParseCmdline(cmdline, &cfg); err == nil {
		t.Fatal("want an error for berth.root=garbage")
	}
}

func TestInitrdConfThenCmdline(t *testing.T) {
	cfg := Defaults()
	if err := ParseInitrdConf([]byte("# built by berth-build\n\nonfail=shell\nrootwait=5\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OnFail != OnFailShell || cfg.RootWait != 5*time.Second {
		t.Fatalf("initrd.conf not applied: %+v", cfg)
	}
	if err := ParseCmdline("berth.root=PARTLABEL=BERTH-B berth.onfail=halt", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OnFail != OnFailHalt || cfg.RootWait != 5*time.Second {
		t.Fatalf("command line must override initrd.conf onfail only: %+v", cfg)
	}
}

func TestInitrdConfErrors(t *testing.T) {
	for conf, wantErr := range map[string]string{
		"onfail":        "line 1: \"onfail\" is not key=value",
		"\nonfail=boom": "line 2: unknown onfail action",
		"colour=blue":   "unknown key \"colour\"",
	} {
		cfg := Defaults()
		err := ParseInitrdConf([]byte(conf), &cfg)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ParseInitrdConf(%q) error = %v, want %q", conf, err, wantErr)
		}
	}
}
