// Package kmod loads the kernel modules the initrd carries, in the order
// the initrd builder wrote them.
package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseList reads /etc/berth/modules: one module path per line, relative
// to /lib/modules/<release>/. Blank lines and # comments are skipped.
func ParseList(data []byte) ([]string, error) {
	var mods []string
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if filepath.IsAbs(line) || strings.Contains("/"+line+"/", "/../") {
			return nil, fmt.Errorf("module list line %d: %q must be a path under /lib/modules/<release>", n+1, line)
		}
		mods = append(mods, line)
	}
	return mods, nil
}

// Name is the module name of a path: kernel/fs/overlayfs/overlay.ko is
// "overlay".
func Name(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return base
}

// Load inserts one module file. A module that is already loaded (or built
// in under the same name) is not an error.
func Load(path string) (alreadyLoaded bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		// .ko.xz, .ko.zst, .ko.gz: let the kernel decompress it
		// (CONFIG_MODULE_DECOMPRESS), or fail with a clear errno.
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("finit_module: %w", err)
	}
	return false, nil
}
