package osrelease

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestUnquote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, ``},
		{`debian`, `debian`},
		{`"Debian GNU/Linux 12 (bookworm)"`, `Debian GNU/Linux 12 (bookworm)`},
		{`'1.0.0-rc.1'`, `1.0.0-rc.1`},
		{`"a \"quoted\" word"`, `a "quoted" word`},
		{`"cost \$5, back\\slash, \` + "`tick`" + `"`, "cost $5, back\\slash, `tick`"},
		{`"keeps \n and \x"`, `keeps \n and \x`}, // only $ " \ ` are escapes in double quotes
		{`'no \"escapes\" here'`, `no \"escapes\" here`},
		{`a\ b`, `a b`},
		{`"a"'b'c`, `abc`},
		{`"unterminated`, `unterminated`},
		{`'unterminated`, `unterminated`},
		{`"it's"`, `it's`},
		{`'say "hi"'`, `say "hi"`},
		{`trailing\`, `trailing`},
	} {
		if got := Unquote(tc.in); got != tc.want {
			t.Errorf("Unquote(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	data := strings.Join([]string{
		`# comment`,
		`NAME="Debian GNU/Linux"`,
		``,
		`  ID=debian  `,
		`IMAGE_ID='berth-minimal'`,
		`BERTH_VERSION="1.2.0"`,
		`not an assignment`,
		`1BAD=x`,
		`BAD-NAME=x`,
		`EMPTY=`,
		`VERSION_ID="12"`,
		`VERSION_ID="13"`, // the last assignment wins, as in a shell
		`NO_NEWLINE=end`,
	}, "\n")
	want := map[string]string{
		"NAME": "Debian GNU/Linux", "ID": "debian", "IMAGE_ID": "berth-minimal",
		"BERTH_VERSION": "1.2.0", "EMPTY": "", "VERSION_ID": "13", "NO_NEWLINE": "end",
	}
	if got := Parse([]byte(data)); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %q\nwant %q", got, want)
	}
}

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "os-release")
	if err := os.WriteFile(p, []byte("ID=berth\r\nVERSION_ID=\"1\"\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	if err != nil || got["ID"] != "berth" || got["VERSION_ID"] != "1" {
		t.Errorf("Read = %q, %v", got, err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.HasPrefix(err.Error(), "read os-release: ") {
		t.Errorf("missing file: %v", err)
	}
}
