package istiod

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	istiolog "istio.io/istio/pkg/log"
)

// ---------------------------------------------------------------------------------------------
// Paths and environment

// repoRoot is the cloudmap-mcp repository (two levels above this package).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func serverBinary() string {
	if b := os.Getenv("CLOUDMAP_MCP_BIN"); b != "" {
		if abs, err := filepath.Abs(b); err == nil {
			return abs
		}
		return b
	}
	return filepath.Join(repoRoot(), "target", "debug", "cloudmap-mcp")
}

func cacheDir() string {
	if d := os.Getenv("CLOUDMAP_MCP_ISTIOD_CACHE"); d != "" {
		if abs, err := filepath.Abs(d); err == nil {
			return abs
		}
		return d
	}
	return filepath.Join(repoRoot(), "target", "istiod")
}

// logDir keeps the logs of the last run of each test (server and istiod), for inspection after a failure.
func logDir(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	d := filepath.Join(cacheDir(), "logs", name)
	_ = os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatalf("create log dir: %v", err)
	}
	return d
}

// ---------------------------------------------------------------------------------------------
// Step timings: every step logs its wall time, and TestMain prints a summary table at the end.

type timing struct {
	test, step string
	d          time.Duration
	failed     bool
}

var (
	timingsMu sync.Mutex
	timings   []timing
	suiteT0   = time.Now()
)

func recordTiming(t testing.TB, step string, d time.Duration) {
	timingsMu.Lock()
	timings = append(timings, timing{test: t.Name(), step: step, d: d, failed: t.Failed()})
	timingsMu.Unlock()
	t.Logf("TIMING %-28s %8.2fs  %s", t.Name(), d.Seconds(), step)
}

// step runs f, records its wall time, and stops the test if f failed it.
func step(t *testing.T, name string, f func()) {
	t.Helper()
	t0 := time.Now()
	defer func() {
		recordTiming(t, name, time.Since(t0))
	}()
	f()
}

func TestMain(m *testing.M) {
	// pkg/adsc logs every response at info level; keep warnings (dropped resources) only, unless asked.
	if os.Getenv("CLOUDMAP_MCP_ISTIOD_ADSC_LOG") == "" {
		if sc := istiolog.FindScope("adsc"); sc != nil {
			sc.SetOutputLevel(istiolog.WarnLevel)
		}
	}
	code := m.Run()
	timingsMu.Lock()
	if len(timings) > 0 {
		fmt.Println("\n=== cloudmap-mcp istiod conformance: wall time per step ===")
		for _, tm := range timings {
			mark := ""
			if tm.failed {
				mark = "  (FAILED)"
			}
			fmt.Printf("%-34s %8.2fs  %s%s\n", tm.test, tm.d.Seconds(), tm.step, mark)
		}
		fmt.Printf("%-34s %8.2fs\n", "total (go test process)", time.Since(suiteT0).Seconds())
	}
	timingsMu.Unlock()
	os.Exit(code)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// stopRetrying makes eventually return err at once.
func stopRetrying(err error) error { return permanentError{err} }

// eventually polls f until it returns nil or the timeout expires; it returns the last error.
func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tcpOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func httpGet(url string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------------------------
// A process writing to a log file, stopped at test cleanup.

type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{}
	err     error
}

func startProcess(t testing.TB, name, logPath, dir string, env []string, bin string, args ...string) *process {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("open log %s: %v", logPath, err)
	}
	fmt.Fprintf(f, "----- %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = f
	cmd.Stderr = f
	// Own process group (stopped as a group); killed if the test process dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s (%s): %v", name, bin, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, logFile: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace; it is idempotent.
func (p *process) stop(grace time.Duration) {
	if p == nil || p.cmd.Process == nil {
		return
	}
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = p.logFile.Close()
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// ---------------------------------------------------------------------------------------------
// The cloudmap-mcp server under test.

const istioNamespace = "istio-system"

type server struct {
	t            testing.TB
	registryPath string
	grpcAddr     string
	adminAddr    string
	logPath      string
	proc         *process
	// extraArgs are appended to the `serve` command line (e.g. TLS flags).
	extraArgs []string
	// sourceArgs, when set, replace `--registry-file <registryPath>` (e.g. `--cloudmap ...`).
	sourceArgs []string
}

// newServer picks ports for a cloudmap-mcp server serving registryPath; start() runs it.
func newServer(t testing.TB, registryPath, logPath string) *server {
	bin := serverBinary()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("cloudmap-mcp binary %s not found (set CLOUDMAP_MCP_BIN or build it with cargo build): %v", bin, err)
	}
	s := &server{
		t:            t,
		registryPath: registryPath,
		grpcAddr:     fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		adminAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		logPath:      logPath,
	}
	t.Cleanup(func() { s.stop() })
	return s
}

// start runs the server (again, on the same ports) and waits for /readyz.
func (s *server) start() {
	s.t.Helper()
	source := []string{"--registry-file", s.registryPath, "--registry-poll-interval", "200ms"}
	dir := filepath.Dir(s.registryPath)
	if s.sourceArgs != nil {
		source, dir = s.sourceArgs, filepath.Dir(s.logPath)
	}
	s.proc = startProcess(s.t, "cloudmap-mcp", s.logPath, dir, []string{
		"RUST_LOG=info",
		"RUST_BACKTRACE=1",
		// Never reach for AWS from the tests.
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_ACCESS_KEY_ID=test",
		"AWS_SECRET_ACCESS_KEY=test",
		"AWS_REGION=us-east-1",
	}, serverBinary(), append(append(append([]string{"serve"}, source...),
		"--grpc-addr", s.grpcAddr,
		"--admin-addr", s.adminAddr,
		"--istio-namespace", istioNamespace,
	), s.extraArgs...)...,
	)
	err := eventually(30*time.Second, func() error {
		if s.proc.exited() {
			return stopRetrying(fmt.Errorf("cloudmap-mcp exited: %v", s.proc.err))
		}
		code, body, err := httpGet("http://" + s.adminAddr + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, bytes.TrimSpace(body))
		}
		if !tcpOpen(s.grpcAddr) {
			return errors.New("gRPC port not open")
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("cloudmap-mcp did not become ready: %v\n--- log tail:\n%s", err, tail(s.logPath, 40))
	}
}

func (s *server) stop() {
	if s.proc != nil {
		s.proc.stop(5 * time.Second)
	}
}

// debugServiceEntries returns the server's own /debug/serviceentries, for failure messages.
func (s *server) debugServiceEntries() string {
	_, body, err := httpGet("http://" + s.adminAddr + "/debug/serviceentries")
	if err != nil {
		return err.Error()
	}
	return string(body)
}
