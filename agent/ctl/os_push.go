package ctl

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/internal/progress"
	"github.com/berth-os/berth/updater/payload"
)

// osPushTimeout bounds the upload of one payload to one node.
const osPushTimeout = 30 * time.Minute

// cmdOSPush pushes a payload into the cluster registry under its version.
func cmdOSPush(ctx context.Context, s *session) error {
	file := s.opts.args[1]
	var keys []ed25519.PublicKey
	if s.opts.os.keys != "" {
		var err error
		if keys, err = payload.LoadPublicKeys(s.opts.os.keys); err != nil {
			return fail(ExitUsage, "--keys: %v", err)
		}
	}
	local, err := payload.OpenLocal(file, keys)
	if err != nil {
		return fail(ExitError, "%v", err)
	}
	version := local.Manifest.Version
	if err := checkPayloadTag(version); err != nil {
		return err
	}
	n, err := pushToCluster(ctx, s, rollout.PayloadRepo+":"+version, local.Image, osPushTimeout)
	if err != nil {
		var exit *exitError
		if errors.As(err, &exit) || ctx.Err() != nil {
			return err
		}
		return fail(ExitError, "push payload %s: no node's registry took it: %v", version, err)
	}
	signature := "signature not checked here (no --keys): every node verifies it before installing"
	if local.Verified {
		signature = fmt.Sprintf("signature verified with the keys in %s", s.opts.os.keys)
	}
	out := s.sys.Stdout
	fmt.Fprintf(out, "pushed %s (%s, %d bytes) to node %s's registry\n", file, progress.MiB(local.Size), local.Size, n)
	fmt.Fprintf(out, "version:   %s (%s %s, %s)\n", version, local.Manifest.OS, local.Manifest.Arch, signature)
	fmt.Fprintf(out, "digest:    %s\n", local.Digest)
	fmt.Fprintf(out, "reference: %s\n", rollout.DefaultPayload(version))
	fmt.Fprintf(out, "roll it out with: berthctl os rollout %s\n", version)
	return nil
}
