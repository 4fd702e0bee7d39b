package yamlnode

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "x.yaml", Line: 3, Column: 5, Field: "files[0].mode", Msg: "bad; expected 0644"}, "x.yaml:3: files[0].mode: bad; expected 0644"},
		{Error{File: "x.yaml", Line: 1, Msg: "empty"}, "x.yaml:1: empty"},
		{Error{File: "x.yaml", Msg: "too big"}, "x.yaml: too big"},
		{Error{Line: 7, Msg: "no file yet"}, "7: no file yet"},
		{Error{Msg: "only a message"}, "only a message"},
		{Error{File: "x.yaml", Line: 2, Msg: "two\nlines\r\nhere"}, "x.yaml:2: two lines here"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: got %q, want %q", tc.e, got, tc.want)
		}
	}
	if got := (Error{Line: 4, Msg: "m"}).In("node.yaml"); got != "node.yaml:4: m" {
		t.Errorf("In = %q", got)
	}
	var err error = &Error{File: "f", Line: 1, Msg: "m"}
	var target *Error
	if !errors.As(fmt.Errorf("wrapped: %w", err), &target) || target.Line != 1 {
		t.Errorf("errors.As does not find *Error in %v", err)
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		line     int    // of the error; 0 for ErrEmpty or success
		msg      string // part of a syntax error's message
		extra    bool
		empty    bool
	}{
		{name: "mapping", in: "a: 1\n"},
		{name: "nothing", in: "", empty: true},
		{name: "comments", in: "# only\n# comments\n", empty: true},
		{name: "bare separator", in: "---\n", empty: true},
		{name: "null", in: "~\n", empty: true},
		{name: "second document", in: "a: 1\n---\nb: 2\n", line: 2, extra: true}, // the line of its "---"
		{name: "bad indentation", in: "a: 1\n  b: 2\n", line: 2, msg: "mapping values are not allowed"},
		{name: "unclosed flow", in: "a: 1\nb: [\n", line: 2, msg: "did not find expected node content"},
		{name: "tab indentation", in: "a:\n  b: 1\n\tc: 2\n", line: 3, msg: "tab character"},
		{name: "control character", in: "a: 1\nb: \x01\n", line: 2, msg: "control characters are not allowed"},
		{name: "bad UTF-8", in: "a: 1\n\nb: \xff\n", line: 3, msg: "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, err := Decode([]byte(tc.in))
			var extra *ExtraDocumentError
			var syntax *SyntaxError
			switch {
			case tc.empty:
				if !errors.Is(err, ErrEmpty) {
					t.Errorf("got %v, %v; want ErrEmpty", root, err)
				}
			case tc.extra:
				if !errors.As(err, &extra) || extra.Line != tc.line {
					t.Errorf("got %v; want a second document on line %d", err, tc.line)
				}
			case tc.line > 0:
				if !errors.As(err, &syntax) || syntax.Line != tc.line || !strings.Contains(syntax.Msg, tc.msg) || strings.HasPrefix(syntax.Msg, "yaml:") {
					t.Errorf("got %v; want a syntax error on line %d containing %q without yaml's prefix", err, tc.line, tc.msg)
				}
			default:
				if err != nil || root == nil || root.Kind != yaml.MappingNode {
					t.Errorf("got %v, %v; want the mapping", root, err)
				}
			}
		})
	}
}

// testWords word problems plainly, to see which problem each key gets.
var testWords = Words{
	BadKey: func(field string, k *yaml.Node, _ []string) *Error { return At(k, field, "bad key") },
	Merge:  func(field string, k *yaml.Node) *Error { return At(k, field, "merge key") },
	Unknown: func(field string, k *yaml.Node, allowed []string) *Error {
		return At(k, field+"."+k.Value, "unknown; expected one of %s", strings.Join(allowed, ", "))
	},
	Duplicate: func(field string, k *yaml.Node, first int) *Error {
		return At(k, field+"."+k.Value, "twice (first on line %d)", first)
	},
}

func TestMapping(t *testing.T) {
	src := `name: a
nmae: b
name: c
[x]: d
base: &b {k: v}
<<: *b
1: one
nmae: again
`
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	root := doc.Content[0]
	var got []string
	for _, e := range testWords.Mapping(root, "top", []string{"name", "base", "1"}) {
		if e.Err != nil {
			got = append(got, fmt.Sprintf("%d:%d %s", e.Err.Line, e.Err.Column, strings.TrimPrefix(e.Err.Error(), fmt.Sprintf("%d: ", e.Err.Line))))
		} else {
			got = append(got, fmt.Sprintf("ok %s", e.Key.Value))
		}
	}
	want := []string{
		"ok name",
		"2:1 top.nmae: unknown; expected one of name, base, 1",
		"3:1 top.name: twice (first on line 1)",
		"4:1 top: bad key",
		"ok base",
		"6:1 top: merge key",
		"ok 1",
		"8:1 top.nmae: twice (first on line 2)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Strict string keys refuse "1:" as a bad key; without Merge, "<<" is
	// a bad key too; nil allows any name.
	strict := testWords
	strict.StringKeys, strict.Merge = true, nil
	var bad []int
	for _, e := range strict.Mapping(root, "top", nil) {
		if e.Err != nil && e.Err.Msg == "bad key" {
			bad = append(bad, e.Key.Line)
		}
	}
	if fmt.Sprint(bad) != "[4 6 7]" {
		t.Errorf("bad keys on lines %v, want [4 6 7]", bad)
	}

	// FollowAliases hands out the aliased node as the value.
	var ali yaml.Node
	if err := yaml.Unmarshal([]byte("a: &x {k: v}\nb: *x\n"), &ali); err != nil {
		t.Fatal(err)
	}
	follow := Words{FollowAliases: true}
	entries := follow.Mapping(ali.Content[0], "", nil)
	if len(entries) != 2 || entries[1].Value.Kind != yaml.MappingNode {
		t.Errorf("alias not followed: %+v", entries)
	}
}

func TestDecodeDoc(t *testing.T) {
	w := DocWords{Empty: "empty", Extra: "second", Syntax: "bad: %s"}
	cases := []struct {
		in       string
		words    DocWords
		wantLine int
		wantMsg  string // "" for no error
		wantNil  bool
	}{
		{"a: 1\n", w, 0, "", false},
		{"", w, 1, "empty", true},
		{"# only a comment\n", DocWords{Extra: "x", Syntax: "%s"}, 0, "", true},
		{"a: 1\n---\nb: 2\n", w, 2, "second", true},
		{"a: 1\nb: [\n", w, 2, "bad: ", true},
	}
	for _, c := range cases {
		root, err := DecodeDoc([]byte(c.in), c.words)
		switch {
		case c.wantMsg == "" && err != nil:
			t.Errorf("%q: unexpected error %v", c.in, err)
		case c.wantMsg != "" && (err == nil || err.Line != c.wantLine || !strings.HasPrefix(err.Msg, c.wantMsg)):
			t.Errorf("%q: error %+v, want line %d and a message starting %q", c.in, err, c.wantLine, c.wantMsg)
		case (root == nil) != c.wantNil:
			t.Errorf("%q: root %v, want nil %v", c.in, root, c.wantNil)
		}
	}
}
