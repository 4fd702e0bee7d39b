// Package imagetest builds small busybox images and serves them from a
// loopback registry, for tests only: every helper takes a testing.TB and
// fails the test on error. Non-test code must not import it.
//
// Images are built locally from the host's /bin/busybox (Debian's
// busybox-static); nothing is pulled from the internet.
package imagetest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BusyboxPath is the static busybox the images carry.
const BusyboxPath = "/bin/busybox"

// Applets get a /bin symlink to busybox in every busybox image.
var Applets = []string{
	"sh", "ash", "echo", "cat", "sleep", "nc", "httpd", "ls", "touch", "mkdir", "rm", "cp", "mv",
	"ln", "chmod", "chown", "stat", "id", "env", "hostname", "ip", "ifconfig", "ps", "kill",
	"wget", "grep", "sed", "awk", "head", "tail", "wc", "true", "false", "test", "[", "printf",
	"df", "du", "mount", "umount", "uname", "date", "dd", "seq", "yes", "pwd", "tee", "sort",
	"find", "xargs", "whoami", "free", "top", "base64", "sha256sum", "md5sum", "ping", "timeout",
	"mknod", "readlink", "realpath", "dirname", "basename", "tr", "cut", "uniq", "od", "nslookup",
}

// Env is the PATH every image built here gets.
var Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// epoch is every entry's time, so the same content makes the same digest.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Entry is one tar entry for Layer. Type defaults to a regular file (or a
// directory when Name ends in "/"); Mode defaults to 0644 (0755 for
// directories). Entries are written as given, so tests can build hostile
// layers (escaping names, whiteouts, devices).
type Entry struct {
	Name     string
	Type     byte
	Body     string
	Mode     int64
	Linkname string
	Uid, Gid int
	Devmajor int64
	Devminor int64
	Xattrs   map[string]string
}

// LayerTar returns the raw tar stream of entries.
func LayerTar(tb testing.TB, entries ...Entry) []byte {
	tb.Helper()
	data, err := tarBytes(entries)
	if err != nil {
		tb.Fatalf("imagetest: %v", err)
	}
	return data
}

func tarBytes(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Linkname,
			Uid: e.Uid, Gid: e.Gid, Devmajor: e.Devmajor, Devminor: e.Devminor,
			ModTime: epoch, Format: tar.FormatPAX,
		}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
			if strings.HasSuffix(e.Name, "/") {
				hdr.Typeflag = tar.TypeDir
			}
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.Body))
		}
		for k, v := range e.Xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar header %q: %w", e.Name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				return nil, fmt.Errorf("tar body %q: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return buf.Bytes(), nil
}

// Layer makes a gzip-compressed layer of entries.
func Layer(tb testing.TB, entries ...Entry) v1.Layer {
	tb.Helper()
	return layerFromTar(tb, LayerTar(tb, entries...))
}

func layerFromTar(tb testing.TB, data []byte) v1.Layer {
	tb.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		tb.Fatalf("imagetest: layer: %v", err)
	}
	return l
}

var busybox struct {
	once  sync.Once
	layer v1.Layer
	err   error
}

// BusyboxLayer is the layer with /bin/busybox, its applet symlinks and a
// minimal /etc. It is the same layer (same digest) on every call.
func BusyboxLayer(tb testing.TB) v1.Layer {
	tb.Helper()
	busybox.once.Do(func() {
		bin, err := os.ReadFile(BusyboxPath)
		if err != nil {
			busybox.err = err
			return
		}
		entries := []Entry{
			{Name: "bin/"}, {Name: "dev/"}, {Name: "etc/"}, {Name: "home/"}, {Name: "proc/"},
			{Name: "root/", Mode: 0o700}, {Name: "sys/"}, {Name: "tmp/", Mode: 0o1777},
			{Name: "usr/"}, {Name: "usr/bin/"}, {Name: "var/"},
			{Name: "bin/busybox", Body: string(bin), Mode: 0o755},
			{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
			{Name: "etc/group", Body: "root:x:0:\nnogroup:x:65534:\n"},
		}
		for _, a := range Applets {
			entries = append(entries, Entry{Name: "bin/" + a, Type: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
		}
		var data []byte
		data, busybox.err = tarBytes(entries)
		if busybox.err != nil {
			return
		}
		busybox.layer, busybox.err = tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, tarball.WithCompressedCaching)
	})
	if busybox.err != nil {
		tb.Fatalf("imagetest: busybox layer (needs busybox-static at %s): %v", BusyboxPath, busybox.err)
	}
	return busybox.layer
}

// FileOption changes how FilesLayer writes its files.
type FileOption func(modes map[string]int64)

// Mode gives the file at path (a key of FilesLayer's map) that mode, e.g.
// 0o755 for a binary: only content starting with "#!" is executable
// otherwise. Content is bytes in a string, so binaries are fine.
func Mode(path string, mode int64) FileOption {
	return func(modes map[string]int64) { modes[strings.TrimPrefix(path, "/")] = mode }
}

// FilesLayer makes a layer holding files (path -> content), with their
// parent directories. Content starting with "#!" is executable; Mode sets
// any other mode.
func FilesLayer(tb testing.TB, files map[string]string, opts ...FileOption) v1.Layer {
	tb.Helper()
	modes := map[string]int64{}
	for _, o := range opts {
		o(modes)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, strings.TrimPrefix(n, "/"))
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	var entries []Entry
	for _, n := range names {
		for d := path.Dir(n); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents sort before their children
	for _, d := range dirList {
		entries = append(entries, Entry{Name: d + "/"})
	}
	for _, n := range names {
		body := files[n]
		if _, ok := files[n]; !ok {
			body = files["/"+n]
		}
		mode := int64(0o644)
		if strings.HasPrefix(body, "#!") {
			mode = 0o755
		}
		if m, ok := modes[n]; ok {
			mode = m
		}
		entries = append(entries, Entry{Name: n, Body: body, Mode: mode})
	}
	return Layer(tb, entries...)
}

// Image assembles layers (bottom first) into a linux/amd64 image whose
// config runs "sh" with a standard PATH.
func Image(tb testing.TB, layers ...v1.Layer) v1.Image {
	tb.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		tb.Fatalf("imagetest: append layers: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		tb.Fatalf("imagetest: config: %v", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Cmd = []string{"sh"}
	cfg.Config.Env = append([]string(nil), Env...)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		tb.Fatalf("imagetest: set config: %v", err)
	}
	return img
}

// BusyboxImage is the busybox layer plus, when extraFiles is not empty, a
// second layer with those files (path -> content).
func BusyboxImage(tb testing.TB, extraFiles map[string]string) v1.Image {
	tb.Helper()
	layers := []v1.Layer{BusyboxLayer(tb)}
	if len(extraFiles) > 0 {
		layers = append(layers, FilesLayer(tb, extraFiles))
	}
	return Image(tb, layers...)
}

// Registry starts an in-memory OCI registry on a loopback port for the
// test's lifetime and returns its host:port.
func Registry(tb testing.TB) (host string) {
	tb.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Push writes img to host/repo (repo may carry ":tag"; default "latest")
// and returns the by-digest reference host/repo@sha256:....
func Push(tb testing.TB, host, repo string, img v1.Image) (ref string) {
	tb.Helper()
	r, err := name.ParseReference(host+"/"+repo, name.Insecure)
	if err != nil {
		tb.Fatalf("imagetest: reference %s/%s: %v", host, repo, err)
	}
	if err := remote.Write(r, img); err != nil {
		tb.Fatalf("imagetest: push %s: %v", r, err)
	}
	d, err := img.Digest()
	if err != nil {
		tb.Fatalf("imagetest: digest: %v", err)
	}
	return r.Context().Digest(d.String()).String()
}

// WriteTarball writes img as a docker-archive tarball at path, tagged ref.
func WriteTarball(tb testing.TB, img v1.Image, path, ref string) {
	tb.Helper()
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		tb.Fatalf("imagetest: tag %q: %v", ref, err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		tb.Fatalf("imagetest: write %s: %v", path, err)
	}
}
