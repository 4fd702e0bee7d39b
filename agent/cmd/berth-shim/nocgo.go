//go:build !cgo

package main

import (
	"fmt"
	"os"
)

// Without cgo there is no libcontainer (its nsenter part is C). This stub
// keeps CGO_ENABLED=0 builds of the whole module working and says why the
// binary is useless.
func main() {
	fmt.Fprintln(os.Stderr, "berth-shim: built without cgo; rebuild with CGO_ENABLED=1 go build -tags seccomp")
	os.Exit(1)
}
