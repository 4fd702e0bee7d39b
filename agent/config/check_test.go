package config

import (
	"strings"
	"testing"
)

func TestCheckFile(t *testing.T) {
	// No advertise IP and no URLs: fine before the network is up.
	if err := CheckFile([]byte("voters: 3\njoin: [https://10.0.0.1:7480]\ntoken: 0123456789abcdef0123456789abcdef\n"), "node-1"); err != nil {
		t.Errorf("valid file refused: %v", err)
	}
	if err := CheckFile(nil, "node-1"); err != nil {
		t.Errorf("empty file refused: %v", err)
	}
	for _, tc := range []struct{ body, host, want string }{
		{"voters: 3\nvotres: 3\n", "node-1", "line 2: field votres not found"},
		{"voters: 2\n", "node-1", "voters: must be 1, 3 or 5"},
		{"voters: 1\n", "Node_1", "name:"},
		{"voters: 1\n", "", "name: not set"},
		{"name: ok\nadvertise_ip: 10.0.0\n", "", "advertise-ip"},
		{"join: [https://10.0.0.1:7480]\n", "n", "join: needs"},
	} {
		err := CheckFile([]byte(tc.body), tc.host)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q (host %q): got %v, want %q", tc.body, tc.host, err, tc.want)
		}
	}
}
