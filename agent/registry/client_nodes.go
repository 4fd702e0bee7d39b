package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Node is one agent's registry, as the cluster knows it.
type Node struct {
	Name string // the node's name
	URL  string // its agent API: https://HOST:PORT
}

// SortedNodes turns node names and their API URLs into Nodes in name
// order: the order every command tries them in.
func SortedNodes(apis map[string]string) []Node {
	out := make([]Node, 0, len(apis))
	for _, n := range slices.Sorted(maps.Keys(apis)) {
		out = append(out, Node{Name: n, URL: apis[n]})
	}
	return out
}

// Ref is target (REPO:TAG or REPO@DIGEST) in n's registry.
func (n Node) Ref(target string) (name.Reference, error) {
	u, err := url.Parse(n.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("node %s has a bad API URL %q", n.Name, n.URL)
	}
	r, err := name.ParseReference(u.Host + "/" + target)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return r, nil
}

// ErrNoNodes says there is no registry to try.
var ErrNoNodes = errors.New("no agent API address is known in the cluster")

// TryNodes calls try on the nodes in order until one succeeds, and
// returns that node. Every failure goes to failed (when set) with the node
// tried next, nil after the last one; when every node failed, the last
// failure is returned. A done ctx stops the walk with ctx's error.
func TryNodes(ctx context.Context, nodes []Node, try func(context.Context, Node) error, failed func(err error, next *Node)) (Node, error) {
	if len(nodes) == 0 {
		return Node{}, ErrNoNodes
	}
	var last error
	for i, n := range nodes {
		last = try(ctx, n)
		if last == nil {
			return n, nil
		}
		if ctx.Err() != nil {
			return Node{}, ctx.Err()
		}
		if failed != nil {
			var next *Node
			if i+1 < len(nodes) {
				next = &nodes[i+1]
			}
			failed(last, next)
		}
	}
	return Node{}, last
}

// Progress follows one transfer; internal/progress's Line is one.
type Progress interface {
	Bytes(done, total int64)
	Done()
}

// PushOptions tune PushToAny.
type PushOptions struct {
	// Timeout bounds the upload to one node; 0: only ctx does.
	Timeout time.Duration
	// Progress, when set, gives the progress of the upload to a node; it
	// is ended (Done) before the next node is tried.
	Progress func(Node) Progress
	// Failed hears of each node that did not take the image, with the
	// node tried next (nil after the last).
	Failed func(err error, next *Node)
}

// PushToAny stores img as target (REPO:TAG) in the cluster registry: it
// uploads it to the nodes' registries in order until one takes it (the
// others fetch it from that one when asked) and returns that node.
func (c *Client) PushToAny(ctx context.Context, nodes []Node, target string, img v1.Image, o PushOptions) (Node, error) {
	return TryNodes(ctx, nodes, func(ctx context.Context, n Node) error {
		ref, err := n.Ref(target)
		if err != nil {
			return err
		}
		if o.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.Timeout)
			defer cancel()
		}
		var report func(done, total int64)
		if o.Progress != nil {
			p := o.Progress(n)
			defer p.Done()
			report = p.Bytes
		}
		if err := c.Push(ctx, ref, img, report); err != nil {
			return fmt.Errorf("push to node %s: %w", n.Name, err)
		}
		return nil
	}, o.Failed)
}

// HasOnAny asks the nodes' registries in order whether target (REPO:TAG
// or REPO@DIGEST) is there. The first node that answers decides: a
// cluster registry asks its peers before it answers "not found". Nodes
// that do not answer are skipped; timeout (0: none) bounds each one.
func (c *Client) HasOnAny(ctx context.Context, nodes []Node, target string, timeout time.Duration) (bool, error) {
	var found bool
	var errs []error
	_, err := TryNodes(ctx, nodes, func(ctx context.Context, n Node) error {
		ref, err := n.Ref(target)
		if err != nil {
			return err
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		if found, err = c.Has(ctx, ref); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		return nil
	}, func(err error, _ *Node) { errs = append(errs, err) })
	switch {
	case errors.Is(err, ErrNoNodes) || ctx.Err() != nil:
		return false, err
	case err != nil:
		return false, fmt.Errorf("no node's registry answered: %w", errors.Join(errs...))
	}
	return found, nil
}
