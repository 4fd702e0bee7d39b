package rollout

import (
	"strings"
	"testing"
	"time"
)

// 2026-11-21 is a Saturday.
func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestWindowContains(t *testing.T) {
	cases := []struct {
		spec string
		at   string
		want bool
	}{
		{"", "2026-11-18 12:00", true},
		{"Sat 02:00-04:00", "2026-11-21 02:00", true},
		{"Sat 02:00-04:00", "2026-11-21 03:59", true},
		{"Sat 02:00-04:00", "2026-11-21 04:00", false},
		{"Sat 02:00-04:00", "2026-11-21 01:59", false},
		{"Sat 02:00-04:00", "2026-11-22 03:00", false}, // Sunday
		{"sat 02:00-04:00", "2026-11-21 03:00", true},
		{"daily 01:00-05:00", "2026-11-18 01:30", true},
		{"daily 01:00-05:00", "2026-11-18 05:30", false},
		{"Sat 23:00-01:00", "2026-11-21 23:30", true},
		{"Sat 23:00-01:00", "2026-11-22 00:30", true}, // Sunday morning, opened Saturday
		{"Sat 23:00-01:00", "2026-11-22 01:00", false},
		{"Sat 23:00-01:00", "2026-11-21 00:30", false}, // opened Friday: not a window day
		{"Mon,Wed 22:00-24:00", "2026-11-18 23:59", true},
		{"Mon,Wed 22:00-24:00", "2026-11-19 00:00", false},
		{"Mon,Wed 22:00-24:00", "2026-11-17 23:00", false}, // Tuesday
	}
	for _, c := range cases {
		w, err := ParseWindow(c.spec)
		if err != nil {
			t.Fatalf("ParseWindow(%q): %v", c.spec, err)
		}
		if got := w.Contains(at(c.at)); got != c.want {
			t.Errorf("%q contains %s = %v, want %v", c.spec, c.at, got, c.want)
		}
	}
	// A time in another zone is taken as the same instant in UTC.
	w, _ := ParseWindow("Sat 02:00-04:00")
	if !w.Contains(at("2026-11-21 03:00").In(time.FixedZone("X", 5*3600))) {
		t.Error("window must compare instants in UTC")
	}
}

func TestWindowErrors(t *testing.T) {
	cases := map[string]string{
		"Sat":                   "want \"DAYS HH:MM-HH:MM\"",
		"Sat 02:00":             "want HH:MM-HH:MM",
		"Sunday 02:00-04:00":    "day \"Sunday\"",
		"Sat 2:00-04:00":        "time \"2:00\": want HH:MM",
		"Sat 02:00-25:00":       "not a time of day",
		"Sat 24:00-02:00":       "start: time \"24:00\"",
		"Sat 02:60-03:00":       "not a time of day",
		"Sat 02:00-02:00":       "start and end are equal",
		"Sat,,Sun 02:00-04:00":  "day \"\"",
		"Sat 02:00-04:00 extra": "want \"DAYS",
	}
	for spec, want := range cases {
		_, err := ParseWindow(spec)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), spec) {
			t.Errorf("ParseWindow(%q) = %v, want an error naming the input and containing %q", spec, err, want)
		}
	}
}
