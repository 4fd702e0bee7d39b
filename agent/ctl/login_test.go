package ctl

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/jobs"
)

func TestFromDockerConfig(t *testing.T) {
	basic := base64.StdEncoding.EncodeToString([]byte("robot:pa:ss"))
	for _, c := range []struct {
		name, config, reg string
		want              jobs.RegistryAuth
		err               string
	}{
		{"auth field", `{"auths":{"reg.example:5000":{"auth":"` + basic + `"}}}`, "reg.example:5000", jobs.RegistryAuth{Username: "robot", Password: "pa:ss"}, ""},
		{"https key", `{"auths":{"https://reg.example":{"username":"u","password":"p"}}}`, "reg.example", jobs.RegistryAuth{Username: "u", Password: "p"}, ""},
		{"identity token", `{"auths":{"reg.example":{"identitytoken":"id-tok"}}}`, "reg.example", jobs.RegistryAuth{IdentityToken: "id-tok"}, ""},
		{"no entry", `{"auths":{"other":{"auth":"` + basic + `"}}}`, "reg.example", jobs.RegistryAuth{}, "no entry for reg.example"},
		{"helper only", `{"auths":{"reg.example":{}},"credHelpers":{"reg.example":"pass"}}`, "reg.example", jobs.RegistryAuth{}, "no credentials"},
		{"bad auth", `{"auths":{"reg.example":{"auth":"!!!"}}}`, "reg.example", jobs.RegistryAuth{}, "not base64"},
		{"not json", `auths: {}`, "reg.example", jobs.RegistryAuth{}, "not a docker config.json"},
	} {
		got, err := fromDockerConfig([]byte(c.config), c.reg)
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: %+v %v, want %+v %q", c.name, got, err, c.want, c.err)
		}
		if err != nil && strings.Contains(err.Error(), "pa:ss") {
			t.Errorf("%s: the error shows the password: %v", c.name, err)
		}
	}
}

func TestCheckRegistryHost(t *testing.T) {
	for host, ok := range map[string]bool{
		"reg.example": true, "127.0.0.60:5000": true, "": false, "reg.example/path": false,
		"user@reg.example": false, "berth.local": false, "a b": false,
	} {
		if err := checkRegistryHost(host); (err == nil) != ok {
			t.Errorf("checkRegistryHost(%q) = %v", host, err)
		}
	}
}
