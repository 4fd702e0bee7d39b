package leader

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/internal/retry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const prefix = "/test/leader"

// candidate runs Run for one name and records its terms.
type candidate struct {
	name    string
	leading atomic.Bool
	terms   atomic.Int32

	mu      sync.Mutex
	term    Term
	ended   []error // context.Cause of each ended term
	retried []error
	step    chan struct{} // closed by the test: the current term returns
}

func startCandidate(t *testing.T, cli *clientv3.Client, name string, inTerm *atomic.Int32, maxInTerm *atomic.Int32) (*candidate, context.CancelFunc) {
	t.Helper()
	c := &candidate{name: name, step: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// TTL 5: long enough that a loaded machine (-race) does not lose a
	// session by a late keepalive; the tests end sessions themselves.
	o := Options{Prefix: prefix, Name: name, TTL: 5, Retry: retry.Policy{
		Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond,
		OnRetry: func(err error, _ time.Duration) {
			c.mu.Lock()
			c.retried = append(c.retried, err)
			c.mu.Unlock()
		},
	}}
	go func() {
		done <- Run(ctx, cli, o, func(ctx context.Context, term Term) error {
			n := inTerm.Add(1)
			defer inTerm.Add(-1)
			for {
				m := maxInTerm.Load()
				if n <= m || maxInTerm.CompareAndSwap(m, n) {
					break
				}
			}
			c.mu.Lock()
			c.term = term
			step := c.step
			c.mu.Unlock()
			c.terms.Add(1)
			c.leading.Store(true)
			defer c.leading.Store(false)
			select {
			case <-ctx.Done():
				c.mu.Lock()
				c.ended = append(c.ended, context.Cause(ctx))
				c.mu.Unlock()
				return ctx.Err()
			case <-step:
				return nil
			}
		})
	}()
	var once sync.Once
	stop := func() { once.Do(func() { wait(t, name, cancel, done) }) }
	t.Cleanup(stop)
	return c, stop
}

// wait stops a candidate: Run must return nil soon after ctx ends.
func wait(t *testing.T, name string, cancel context.CancelFunc, done <-chan error) {
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run(%s) = %v, want nil after ctx ended", name, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Run(%s) still running 10s after ctx ended", name)
	}
}

// stepDown makes c's current term return.
func (c *candidate) stepDown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.step)
	c.step = make(chan struct{})
}

func (c *candidate) current() Term {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.term
}

func (c *candidate) endedWith() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.ended...)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; last state: %s", timeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// oneLeader waits until exactly one of cs leads and returns it.
func oneLeader(t *testing.T, cs ...*candidate) *candidate {
	t.Helper()
	var got *candidate
	eventually(t, 15*time.Second, "exactly one leader", func() (bool, string) {
		got = nil
		state := ""
		for _, c := range cs {
			state += fmt.Sprintf("%s=%v ", c.name, c.leading.Load())
			if c.leading.Load() {
				if got != nil {
					return false, state
				}
				got = c
			}
		}
		return got != nil, state
	})
	return got
}

func leaderValue(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// Candidates that step down in turn: leadership passes from one to the
// next, never two terms at once, and the election key names the leader.
func TestOneLeaderAtATime(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var inTerm, maxInTerm atomic.Int32
	var cs []*candidate
	for _, n := range []string{"a", "b", "c"} {
		c, _ := startCandidate(t, e.Client(t), n, &inTerm, &maxInTerm)
		cs = append(cs, c)
	}
	seen := map[string]bool{}
	for range 6 {
		l := oneLeader(t, cs...)
		seen[l.name] = true
		if v := leaderValue(t, cli); v != l.name {
			t.Fatalf("election key says %q, %s leads", v, l.name)
		}
		before := l.terms.Load()
		l.stepDown()
		eventually(t, 10*time.Second, "the leader's term ended", func() (bool, string) {
			return !l.leading.Load() || l.terms.Load() > before, ""
		})
	}
	if len(seen) < 2 {
		t.Fatalf("leadership never changed hands: %v", seen)
	}
	if m := maxInTerm.Load(); m != 1 {
		t.Fatalf("%d terms ran at once", m)
	}
	// A term that returns nil is reported as ErrTermEnded.
	for _, c := range cs {
		c.mu.Lock()
		for _, err := range c.retried {
			if !errors.Is(err, ErrTermEnded) {
				t.Errorf("%s retried after %v, want %v", c.name, err, ErrTermEnded)
			}
		}
		c.mu.Unlock()
	}
}

// The leader's session dies (its lease revoked, as when it expires):
// its term's context ends with ErrSessionLost and another candidate leads.
func TestSessionLostHandsOver(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var inTerm, maxInTerm atomic.Int32
	a, _ := startCandidate(t, e.Client(t), "a", &inTerm, &maxInTerm)
	b, _ := startCandidate(t, e.Client(t), "b", &inTerm, &maxInTerm)
	old := oneLeader(t, a, b)
	other := a
	if old == a {
		other = b
	}
	term := old.current()
	if _, err := cli.Revoke(context.Background(), term.Session.Lease()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the other candidate leads", func() (bool, string) {
		return other.leading.Load() && !old.leading.Load(), fmt.Sprint(a.leading.Load(), b.leading.Load())
	})
	ended := old.endedWith()
	if len(ended) != 1 || !(errors.Is(ended[0], ErrSessionLost) || errors.Is(ended[0], ErrKeyDeleted)) {
		t.Fatalf("old leader's term ended with %v, want %v or %v", ended, ErrSessionLost, ErrKeyDeleted)
	}
	// The old leader's writes are fenced off.
	resp, err := cli.Txn(context.Background()).If(term.Fence()).Then(clientv3.OpPut("/test/x", "stale")).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("write fenced by the lost term: succeeded=%v err=%v", resp != nil && resp.Succeeded, err)
	}
	// The old leader campaigns again and waits as follower.
	eventually(t, 10*time.Second, "the old leader campaigns again", func() (bool, string) {
		resp, err := cli.Get(context.Background(), prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2 && other.leading.Load() && !old.leading.Load(), fmt.Sprint(err, resp.Count)
	})
}

// Someone deletes the election key: the term ends with ErrKeyDeleted
// although the session lives on.
func TestKeyDeletedEndsTerm(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var inTerm, maxInTerm atomic.Int32
	a, _ := startCandidate(t, e.Client(t), "a", &inTerm, &maxInTerm)
	oneLeader(t, a)
	term := a.current()
	if _, err := cli.Delete(context.Background(), term.Key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the term ends and a new one starts", func() (bool, string) {
		return a.terms.Load() >= 2 && a.leading.Load(), fmt.Sprint(a.terms.Load())
	})
	if ended := a.endedWith(); len(ended) == 0 || !errors.Is(ended[0], ErrKeyDeleted) {
		t.Fatalf("term ended with %v, want %v", ended, ErrKeyDeleted)
	}
	if got := a.current(); got.Rev <= term.Rev {
		t.Fatalf("new term's revision %d not after the old %d", got.Rev, term.Rev)
	}
}

// Stopping the leader resigns at once: the follower does not wait for the
// TTL.
func TestStopResigns(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	var inTerm, maxInTerm atomic.Int32
	a, stopA := startCandidate(t, e.Client(t), "a", &inTerm, &maxInTerm)
	oneLeader(t, a)
	b, _ := startCandidate(t, e.Client(t), "b", &inTerm, &maxInTerm)
	time.Sleep(100 * time.Millisecond) // b is campaigning
	start := time.Now()
	stopA()
	eventually(t, 10*time.Second, "b leads", func() (bool, string) { return b.leading.Load(), "" })
	// The TTL is 5 s; a handover by expiry would take at least that.
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("handover took %v", took)
	}
	if ended := a.endedWith(); len(ended) != 1 || !errors.Is(ended[0], context.Canceled) {
		t.Fatalf("stopped term ended with %v, want context.Canceled", ended)
	}
}

func TestRunNeedsPrefix(t *testing.T) {
	if err := Run(context.Background(), nil, Options{Name: "a"}, nil); err == nil {
		t.Fatal("Run without a prefix succeeded")
	}
}
