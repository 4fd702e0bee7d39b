package rollout

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a weekly maintenance window in UTC. The zero Window (from "")
// is always open.
type Window struct {
	days  [7]bool // by time.Weekday
	start int     // minutes after midnight
	dur   int     // minutes, 1..24*60
	spec  string
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseWindow reads "DAYS HH:MM-HH:MM" where DAYS is "daily" or a
// comma-separated list of weekdays (Mon, tue, SAT ...). Times are UTC; an
// end at or before the start ends on the next day ("Sat 23:00-01:00"), and
// "24:00" is allowed as an end. "" is a window that is always open.
func ParseWindow(spec string) (Window, error) {
	w := Window{spec: spec}
	if strings.TrimSpace(spec) == "" {
		return Window{}, nil
	}
	fields := strings.Fields(spec)
	if len(fields) != 2 {
		return Window{}, fmt.Errorf("window %q: want \"DAYS HH:MM-HH:MM\" (e.g. \"Sat 02:00-04:00\" or \"daily 01:00-05:00\")", spec)
	}
	if strings.EqualFold(fields[0], "daily") {
		for d := range w.days {
			w.days[d] = true
		}
	} else {
		for _, name := range strings.Split(fields[0], ",") {
			d, ok := weekdays[strings.ToLower(name)]
			if !ok {
				return Window{}, fmt.Errorf("window %q: day %q is not daily or one of Mon Tue Wed Thu Fri Sat Sun", spec, name)
			}
			w.days[d] = true
		}
	}
	from, to, ok := strings.Cut(fields[1], "-")
	if !ok {
		return Window{}, fmt.Errorf("window %q: times %q: want HH:MM-HH:MM", spec, fields[1])
	}
	start, err := parseClock(from, false)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: start: %w", spec, err)
	}
	end, err := parseClock(to, true)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: end: %w", spec, err)
	}
	if start == end {
		return Window{}, fmt.Errorf("window %q: start and end are equal (use \"daily 00:00-24:00\" for always)", spec)
	}
	w.start = start
	w.dur = end - start
	if w.dur < 0 {
		w.dur += 24 * 60
	}
	return w, nil
}

// parseClock reads HH:MM (two digits each); "24:00" only when allow24.
func parseClock(s string, allow24 bool) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	if !ok || len(hh) != 2 || len(mm) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	h, errH := strconv.Atoi(hh)
	m, errM := strconv.Atoi(mm)
	if errH != nil || errM != nil || h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && (m != 0 || !allow24)) {
		return 0, fmt.Errorf("time %q is not a time of day 00:00..23:59", s)
	}
	return h*60 + m, nil
}

// Always tells whether the window is always open (the zero Window).
func (w Window) Always() bool { return w.dur == 0 }

// String is the specification the window was parsed from.
func (w Window) String() string { return w.spec }

// Contains tells whether t (taken as UTC) is inside the window.
func (w Window) Contains(t time.Time) bool {
	if w.Always() {
		return true
	}
	t = t.UTC()
	// A window opens at most once a day and lasts at most a day, so only
	// the windows opening today or yesterday can contain t.
	for _, back := range []int{0, -1} {
		day := t.AddDate(0, 0, back)
		if !w.days[day.Weekday()] {
			continue
		}
		open := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC).Add(time.Duration(w.start) * time.Minute)
		if !t.Before(open) && t.Before(open.Add(time.Duration(w.dur)*time.Minute)) {
			return true
		}
	}
	return false
}
