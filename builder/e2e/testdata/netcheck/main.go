// netcheck is the program in the end-to-end tests' container image: a
// static binary (CGO_ENABLED=0) whose subcommands are the checks the
// cluster scenarios run inside containers. Every answer is one line of
// key=value words, so the tests parse it without guessing.
//
//	netcheck serve [-http :8080] [-udp :8081]   HTTP and UDP echo; both answer "host=H client=IP:PORT";
//	                                            GET /bytes?n=N sends N zero bytes (throughput)
//	netcheck get [-n N] URL                     prints the body; exit 1 on failure
//	netcheck pull URL                           reads the body, prints "bytes=B seconds=S mib_per_s=R"
//	netcheck dnsbench [-n N] NAME               looks NAME up N times, prints "lookups=N p50_us=.. p90_us=.. max_us=.."
//	netcheck udp ADDR MSG                       prints the reply; exit 1 without one
//	netcheck connect ADDR                       exit 0 when a TCP connect succeeds in time, 1 otherwise
//	netcheck resolve NAME                       prints the addresses, one a line; exit 1 on failure
//	netcheck hog                                allocates (and touches) memory until killed
//	netcheck forkbomb [PROG ARGS...]            starts children until that fails, prints how many
//	netcheck sleep                              does nothing until killed
//	netcheck commitd [-http :8080] FILE         a minimal database: POST /commit?n=N appends "N" to FILE
//	                                            and answers "ok n=N" only after fsync (acknowledged);
//	                                            GET /check?upto=N answers "lines=L missing=M first_missing=F"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// timeout bounds every client operation: an unreachable address is an
// answer ("no"), not a hang.
const timeout = 3 * time.Second

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(args)
	case "get":
		err = get(args)
	case "pull":
		err = pull(args)
	case "dnsbench":
		err = dnsbench(args)
	case "udp":
		err = udp(args)
	case "connect":
		err = connect(args)
	case "resolve":
		err = resolve(args)
	case "hog":
		err = hog()
	case "forkbomb":
		err = forkbomb(args)
	case "sleep":
		waitForSignal()
	case "commitd":
		err = commitd(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netcheck %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck serve|get URL|pull URL|udp ADDR MSG|connect ADDR|resolve NAME|dnsbench NAME|hog|forkbomb|sleep|commitd FILE")
	os.Exit(2)
}

// waitForSignal returns never: as pid 1 of a container, netcheck gets no
// default signal handling, so SIGTERM must end it explicitly.
func waitForSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
	os.Exit(0)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	udpAddr := fs.String("udp", ":8081", "UDP echo listen address (empty: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				reply := fmt.Sprintf("host=%s client=%s msg=%s\n", hostname(), from, buf[:n])
				pc.WriteTo([]byte(reply), from)
			}
		}()
	}
	go waitForSignal()
	fmt.Printf("serving http on %s, udp on %s as %s\n", ln.Addr(), *udpAddr, hostname())
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes", sendBytes)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s client=%s\n", hostname(), r.RemoteAddr)
	})
	return http.Serve(ln, mux)
}

// commitd is the database of the volume scenarios: every commit is on
// disk (fsync) before it is acknowledged, like a database's commit.
func commitd(args []string) error {
	fs := flag.NewFlagSet("commitd", flag.ContinueOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want the log file")
	}
	f, err := os.OpenFile(fs.Arg(0), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	go waitForSignal()
	fmt.Printf("committing to %s, http on %s as %s\n", fs.Arg(0), ln.Addr(), hostname())
	var mu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("/commit", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || r.Method != http.MethodPost {
			http.Error(w, "POST /commit?n=N", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(f, "%d\n", n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := f.Sync(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "ok n=%d\n", n)
	})
	mux.HandleFunc("/check", func(w http.ResponseWriter, r *http.Request) {
		upto, err := strconv.ParseInt(r.URL.Query().Get("upto"), 10, 64)
		if err != nil {
			http.Error(w, "GET /check?upto=N", http.StatusBadRequest)
			return
		}
		data, err := os.ReadFile(fs.Arg(0))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		seen := map[int64]bool{}
		lines := strings.Fields(string(data))
		for _, l := range lines {
			if v, err := strconv.ParseInt(l, 10, 64); err == nil {
				seen[v] = true
			}
		}
		missing, first := 0, int64(0)
		for i := int64(1); i <= upto; i++ {
			if !seen[i] {
				if missing == 0 {
					first = i
				}
				missing++
			}
		}
		fmt.Fprintf(w, "lines=%d missing=%d first_missing=%d\n", len(lines), missing, first)
	})
	return http.Serve(ln, mux)
}

// sendBytes answers n (the query's n) zero bytes, for throughput.
func sendBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 || n > 1<<32 {
		http.Error(w, "want n=BYTES (0 to 4 GiB)", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, 256<<10)
	for n > 0 {
		chunk := min(n, int64(len(buf)))
		if _, err := w.Write(buf[:chunk]); err != nil {
			return
		}
		n -= chunk
	}
}

// pull reads URL's body to the end and reports the rate.
func pull(args []string) error {
	if len(args) != 1 {
		return errors.New("want URL")
	}
	// A bulk transfer under emulation takes longer than one answer.
	c := &http.Client{Timeout: 5 * time.Minute}
	start := time.Now()
	resp, err := c.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("bytes=%d seconds=%.3f mib_per_s=%.2f\n", n, secs, float64(n)/(1<<20)/secs)
	return nil
}

// dnsbench looks NAME up N times, one after the other, and reports the
// answer latency (A and AAAA, as a program's lookup asks).
func dnsbench(args []string) error {
	fs := flag.NewFlagSet("dnsbench", flag.ContinueOnError)
	count := fs.Int("n", 50, "lookups to make")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *count < 1 {
		return errors.New("want [-n N>0] NAME")
	}
	lat := make([]time.Duration, 0, *count)
	for range *count {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		start := time.Now()
		_, err := net.DefaultResolver.LookupHost(ctx, fs.Arg(0))
		cancel()
		if err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(q float64) int64 { return lat[int(q*float64(len(lat)-1))].Microseconds() }
	fmt.Printf("lookups=%d p50_us=%d p90_us=%d max_us=%d\n", len(lat), at(0.5), at(0.9), lat[len(lat)-1].Microseconds())
	return nil
}

// get fetches URL (-n N: N times, as load for a server; the last body is
// printed).
func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	count := fs.Int("n", 1, "requests to make")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want URL")
	}
	c := &http.Client{Timeout: timeout}
	var body []byte
	for i := 0; i < *count; i++ {
		resp, err := c.Get(fs.Arg(0))
		if err != nil {
			return err
		}
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
	}
	os.Stdout.Write(body)
	return nil
}

// udp sends MSG up to three times (UDP may drop one) and prints the
// first reply.
func udp(args []string) error {
	if len(args) != 2 {
		return errors.New("want ADDR MSG")
	}
	conn, err := net.DialTimeout("udp", args[0], timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	for try := 0; try < 3; try++ {
		if _, err := conn.Write([]byte(args[1])); err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(timeout / 3))
		n, err := conn.Read(buf)
		if err == nil {
			os.Stdout.Write(buf[:n])
			return nil
		}
	}
	return fmt.Errorf("no reply from %s within %s", args[0], timeout)
}

func connect(args []string) error {
	if len(args) != 1 {
		return errors.New("want ADDR")
	}
	conn, err := net.DialTimeout("tcp", args[0], timeout)
	if err != nil {
		return err
	}
	fmt.Printf("connected local=%s remote=%s\n", conn.LocalAddr(), conn.RemoteAddr())
	return conn.Close()
}

func resolve(args []string) error {
	if len(args) != 1 {
		return errors.New("want NAME")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, args[0])
	if err != nil {
		return err
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		fmt.Println(a)
	}
	return nil
}

// hog keeps every chunk referenced and writes each page, so the memory is
// really in use (not just reserved) and the cgroup's limit is reached.
func hog() error {
	const chunk = 8 << 20
	var kept [][]byte
	for {
		b := make([]byte, chunk)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		kept = append(kept, b)
		fmt.Printf("allocated=%d\n", len(kept)*chunk)
	}
}

// forkbomb starts children (by default "/bin/sleep 3600": single-threaded,
// so each is one task of the pids limit) until the kernel refuses, prints
// "forked=N err=..." and the cgroup's pids figures when it can read them,
// then exits 0 (its children die with it, as it is the pid namespace's
// init). A Go child would not do: it needs several threads, and when one
// cannot be made it crashes, freeing its slot, so the loop would not end.
func forkbomb(args []string) error {
	prog := []string{"/bin/sleep", "3600"}
	if len(args) > 0 {
		prog = args
	}
	attr := &syscall.ProcAttr{Env: os.Environ()}
	n := 0
	var ferr error
	for n < 100000 {
		if _, err := syscall.ForkExec(prog[0], prog, attr); err != nil {
			ferr = err
			break
		}
		n++
	}
	cur, _ := os.ReadFile("/sys/fs/cgroup/pids.current")
	max, _ := os.ReadFile("/sys/fs/cgroup/pids.max")
	fmt.Printf("forked=%d err=%q pids.current=%s pids.max=%s\n", n, fmt.Sprint(ferr),
		orDash(strings.TrimSpace(string(cur))), orDash(strings.TrimSpace(string(max))))
	if ferr == nil {
		return errors.New("no limit reached")
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
