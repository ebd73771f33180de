// Command rekon-controlplane runs a local Kubernetes control plane in one process, for
// rekon's integration tests and its demo: an embedded etcd, kube-apiserver serving TLS on
// loopback with RBAC, and the garbage-collector and namespace controllers.
//
// Once /readyz answers 200 it prints exactly one line on stdout:
//
//	REKON_CONTROLPLANE_READY kubeconfig=PATH server=https://127.0.0.1:PORT etcd=http://127.0.0.1:PORT admin=http://127.0.0.1:PORT data-dir=DIR pid=PID
//
// Everything else goes to stderr. It serves until SIGTERM or SIGINT, a POST to the admin
// endpoint's /shutdown, or until its parent process dies, and then shuts down cleanly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// readyPrefix starts the one line this program prints on stdout.
const readyPrefix = "REKON_CONTROLPLANE_READY"

// initialParent is the parent process id at start; a change means the parent died.
var initialParent = os.Getppid()

func init() {
	// Package init runs on the main OS thread, which lives as long as the process, so
	// the parent-death signal set here stays armed. The signal arrives when the thread
	// that spawned us exits; the parent poll in watchParent covers a parent that died
	// before this line ran.
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0)
}

// settings are the command-line settings.
type settings struct {
	dataDir       string
	removeDataDir bool
	port          int
	kubeconfigOut string
	watchCache    bool
	verbosity     int
	etcdLogLevel  string
	gcSyncPeriod  time.Duration
	readyTimeout  time.Duration
	apiserverArgs stringList
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func parseFlags() (*settings, error) {
	o := &settings{}
	fs := flag.NewFlagSet("rekon-controlplane", flag.ContinueOnError)
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certificates and the kubeconfig; reused on restart (default: a fresh temporary directory, removed on exit)")
	fs.BoolVar(&o.removeDataDir, "remove-data-dir", false, "remove --data-dir after a clean shutdown (always true for the default temporary directory)")
	fs.IntVar(&o.port, "port", 0, "kube-apiserver TLS port on 127.0.0.1 (0: the port of the previous run on this data dir if free, else any free port)")
	fs.StringVar(&o.kubeconfigOut, "kubeconfig-out", "", "where to write the admin kubeconfig (default: DATA_DIR/kubeconfig)")
	fs.BoolVar(&o.watchCache, "watch-cache", true, "enable the kube-apiserver watch cache (off: watches are served by etcd, so a compaction yields 410 Gone for older resourceVersions)")
	fs.IntVar(&o.verbosity, "v", 0, "klog verbosity of kube-apiserver and the controllers")
	fs.StringVar(&o.etcdLogLevel, "etcd-log-level", "warn", "etcd log level (debug, info, warn, error)")
	fs.DurationVar(&o.gcSyncPeriod, "gc-sync-period", 5*time.Second, "how often the garbage collector rediscovers resources (new CRDs become collectable after at most this long)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 2*time.Minute, "give up when the control plane is not ready after this long")
	fs.Var(&o.apiserverArgs, "apiserver-arg", "an extra kube-apiserver flag such as --feature-gates=X=true (repeatable; applied last)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.port < 0 || o.port > 65535 {
		return nil, fmt.Errorf("--port=%d is not a TCP port", o.port)
	}
	return o, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "rekon-controlplane: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	opts, err := parseFlags()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go watchParent(ctx, cancel)

	if opts.dataDir == "" {
		dir, err := os.MkdirTemp("", "rekon-controlplane-")
		if err != nil {
			return fmt.Errorf("creating a temporary data directory: %w", err)
		}
		opts.dataDir = dir
		opts.removeDataDir = true
	}
	if opts.dataDir, err = filepath.Abs(opts.dataDir); err != nil {
		return fmt.Errorf("resolving --data-dir: %w", err)
	}
	if err := os.MkdirAll(opts.dataDir, 0o700); err != nil {
		return fmt.Errorf("creating data directory %s: %w", opts.dataDir, err)
	}
	if opts.kubeconfigOut == "" {
		opts.kubeconfigOut = filepath.Join(opts.dataDir, "kubeconfig")
	}
	if opts.kubeconfigOut, err = filepath.Abs(opts.kubeconfigOut); err != nil {
		return fmt.Errorf("resolving --kubeconfig-out: %w", err)
	}

	cp, err := start(ctx, opts)
	if err != nil {
		// Stopped while starting by a signal or the parent's death: nobody will read the
		// log in a temporary data dir (otherwise the caller may want it). Remove it
		// first: kube-apiserver exits the process (klog.Fatal) when it is stopped before
		// its post-start hooks finished, so code after shutdown may never run.
		if ctx.Err() != nil && opts.removeDataDir {
			_ = os.RemoveAll(opts.dataDir)
		}
		if cp != nil {
			cp.shutdown()
		}
		return err
	}

	fmt.Fprintf(os.Stdout, "%s kubeconfig=%s server=%s etcd=%s admin=%s data-dir=%s pid=%d\n",
		readyPrefix, opts.kubeconfigOut, cp.serverURL, cp.etcdURL, cp.adminURL, opts.dataDir, os.Getpid())

	var failure error
	select {
	case <-ctx.Done():
		klog.InfoS("Shutting down", "reason", context.Cause(ctx))
	case <-cp.adminShutdown:
		klog.InfoS("Shutting down", "reason", "admin endpoint asked for shutdown")
	case <-cp.apiserverStopped:
		failure = fmt.Errorf("kube-apiserver stopped unexpectedly: %w", errOrNil(cp.apiserverErr))
	case err := <-cp.etcd.Err():
		failure = fmt.Errorf("embedded etcd failed: %w", errOrNil(err))
	}
	// From here a second SIGINT or SIGTERM ends the process at once.
	stop()
	cp.shutdown()
	if failure != nil {
		return failure
	}
	if opts.removeDataDir {
		if err := os.RemoveAll(opts.dataDir); err != nil {
			return fmt.Errorf("removing data directory %s: %w", opts.dataDir, err)
		}
	}
	return nil
}

func errOrNil(err error) error {
	if err == nil {
		return errors.New("no error reported")
	}
	return err
}

// watchParent cancels ctx when the parent process goes away (its pid changes because we
// were re-parented), for the case where the parent-death signal could not be armed in
// time.
func watchParent(ctx context.Context, cancel context.CancelCauseFunc) {
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if os.Getppid() != initialParent {
				cancel(fmt.Errorf("parent process %d exited", initialParent))
				return
			}
		}
	}
}
