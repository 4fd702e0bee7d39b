package initrd

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// moduleIndex is what depmod wrote about one kernel: each module's
// dependencies and the modules built into the kernel image.
type moduleIndex struct {
	deps    map[string][]string // relative path -> relative paths it depends on
	byName  map[string]string   // normalized name -> relative path
	builtin map[string]bool     // normalized names
}

// moduleName turns "kernel/drivers/char/hw_random/virtio-rng.ko.xz" or
// "virtio-rng" into "virtio_rng", the name the kernel uses: depmod and
// modprobe treat '-' and '_' alike.
func moduleName(s string) string {
	base := path.Base(s)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func readModuleIndex(modDir string) (*moduleIndex, error) {
	idx := &moduleIndex{deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
	depFile := filepath.Join(modDir, "modules.dep")
	err := eachLine(depFile, func(n int, line string) error {
		mod, deps, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" {
			return fmt.Errorf("%s:%d: %q is not \"module.ko: deps...\"", depFile, n, line)
		}
		if _, dup := idx.deps[mod]; dup {
			return fmt.Errorf("%s:%d: %s is listed twice", depFile, n, mod)
		}
		idx.deps[mod] = strings.Fields(deps)
		name := moduleName(mod)
		if _, dup := idx.byName[name]; !dup { // depmod's first match wins, as for modprobe
			idx.byName[name] = mod
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read module index: %s does not exist; run depmod for this kernel in the root: %w", depFile, err)
		}
		return nil, err
	}
	// modules.builtin is optional: a kernel with everything as modules may lack it.
	err = eachLine(filepath.Join(modDir, "modules.builtin"), func(_ int, line string) error {
		idx.builtin[moduleName(line)] = true
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return idx, nil
}

// eachLine calls fn for every non-blank, non-comment line of a file.
func eachLine(file string, fn func(n int, line string) error) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024) // long dependency lists
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// ResolveModules returns the modules to load for the requested names, with
// all their dependencies, as paths relative to modDir (the kernel's
// lib/modules/<version> directory), each after everything it depends on and
// none twice. Names built into the kernel are skipped. The order follows
// the request order, then modules.dep's order, so it is stable.
func ResolveModules(modDir string, names []string) ([]string, error) {
	idx, err := readModuleIndex(modDir)
	if err != nil {
		return nil, err
	}
	r := resolver{idx: idx, modDir: modDir, state: map[string]visitState{}}
	for _, name := range names {
		if name == "" || strings.ContainsAny(name, "/ \t\n") {
			return nil, fmt.Errorf("initrd module %q: not a module name", name)
		}
		norm := moduleName(name)
		mod, ok := idx.byName[norm]
		if !ok {
			if idx.builtin[norm] {
				continue // built in: nothing to load
			}
			return nil, fmt.Errorf("initrd module %q not found in %s (not a module and not built in)", name, modDir)
		}
		if err := r.visit(mod, nil); err != nil {
			return nil, err
		}
	}
	for _, mod := range r.order {
		if err := checkModuleFile(modDir, mod); err != nil {
			return nil, err
		}
	}
	return r.order, nil
}

type visitState int

const (
	unvisited visitState = iota
	visiting
	done
)

type resolver struct {
	idx    *moduleIndex
	modDir string
	state  map[string]visitState
	order  []string
}

// visit appends mod after its dependencies (depth-first, post-order).
// modules.dep already lists the transitive closure, but walking it keeps
// the order right even when a listed dependency has dependencies of its
// own that come later on the line.
func (r *resolver) visit(mod string, chain []string) error {
	switch r.state[mod] {
	case done:
		return nil
	case visiting:
		return fmt.Errorf("%s/modules.dep: dependency cycle: %s", r.modDir, strings.Join(append(chain, mod), " -> "))
	}
	r.state[mod] = visiting
	chain = append(chain, mod)
	for _, dep := range r.idx.deps[mod] {
		if _, ok := r.idx.deps[dep]; !ok {
			return fmt.Errorf("%s/modules.dep: %s depends on %s, which has no entry of its own; re-run depmod", r.modDir, mod, dep)
		}
		if err := r.visit(dep, chain); err != nil {
			return err
		}
	}
	r.state[mod] = done
	r.order = append(r.order, mod)
	return nil
}

func checkModuleFile(modDir, mod string) error {
	if !filepath.IsLocal(mod) {
		return fmt.Errorf("%s/modules.dep: module path %q leaves the module directory", modDir, mod)
	}
	st, err := os.Stat(filepath.Join(modDir, mod))
	if err != nil {
		return fmt.Errorf("module %s is in modules.dep but its file is missing: %w", mod, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("module %s: %s is not a regular file", mod, filepath.Join(modDir, mod))
	}
	return nil
}

// ModulesDir returns root's lib/modules directory. Merged-/usr roots make
// lib a symlink, possibly absolute; it is resolved inside root, never on
// the build machine.
func ModulesDir(root string) (string, error) {
	lib := filepath.Join(root, "lib")
	target, err := os.Readlink(lib)
	switch {
	case err == nil:
		// An absolute target is taken inside root; a relative one is
		// relative to root, the directory holding the link: same join.
		lib = filepath.Join(root, target)
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("root %s has no lib directory: %w", root, err)
	}
	// Readlink fails with EINVAL on a plain directory: use it as is.
	dir := filepath.Join(lib, "modules")
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("root %s has no kernel modules: %w", root, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("root %s: %s is not a directory", root, dir)
	}
	return dir, nil
}

// KernelVersions lists the kernel versions under root/lib/modules that
// depmod has indexed (those with a modules.dep; a directory left behind by
// a removed kernel has none), in version order.
func KernelVersions(root string) ([]string, error) {
	dir, err := ModulesDir(root)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list kernel versions: %w", err)
	}
	var versions []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "modules.dep")); err == nil {
			versions = append(versions, e.Name())
		}
	}
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	return versions, nil
}

// versionLess compares digit runs as numbers, so 6.1.0-9 sorts before
// 6.1.0-28, and everything else byte-wise.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
