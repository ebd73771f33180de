package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// controlPlane is a running etcd + kube-apiserver + controllers.
type controlPlane struct {
	serverURL, etcdURL, adminURL string

	etcd       *embed.Etcd
	etcdClient *clientv3.Client

	apiCancel        context.CancelFunc
	apiserverStopped chan struct{} // closed when kube-apiserver's Run returned
	apiserverErr     error         // what Run returned; read after apiserverStopped

	ctrlCancel  context.CancelFunc
	controllers *controllers

	admin         *adminServer
	adminShutdown <-chan struct{}
}

// start brings the control plane up and returns once it is ready. On error the caller
// shuts down whatever part of it is returned.
func start(ctx context.Context, o *settings) (*controlPlane, error) {
	startCtx, cancelStart := context.WithTimeoutCause(ctx, o.readyTimeout,
		fmt.Errorf("the control plane was not ready after --ready-timeout=%s", o.readyTimeout))
	defer cancelStart()
	began := time.Now()

	portsPath := filepath.Join(o.dataDir, "ports.json")
	previous := loadPorts(portsPath)

	p, err := ensurePKI(filepath.Join(o.dataDir, "pki"))
	if err != nil {
		return nil, err
	}

	cp := &controlPlane{apiserverStopped: make(chan struct{})}

	etcdClientPort, err := freePort(previous.EtcdClient)
	if err != nil {
		return nil, fmt.Errorf("finding a free port for etcd clients: %w", err)
	}
	etcdPeerPort, err := freePort(previous.EtcdPeer)
	if err != nil {
		return nil, fmt.Errorf("finding a free port for etcd peers: %w", err)
	}
	cp.etcd, cp.etcdURL, err = startEtcd(startCtx, etcdDataDir(o.dataDir), etcdClientPort, etcdPeerPort, o.etcdLogLevel)
	if err != nil {
		return nil, err
	}
	cp.etcdClient, err = clientv3.New(clientv3.Config{Endpoints: []string{cp.etcdURL}, DialTimeout: 10 * time.Second})
	if err != nil {
		return cp, fmt.Errorf("connecting to the embedded etcd at %s: %w", cp.etcdURL, err)
	}
	klog.InfoS("Embedded etcd is ready", "url", cp.etcdURL, "elapsed", time.Since(began))

	var apiListener net.Listener
	if o.port != 0 {
		apiListener, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(o.port)))
		if err != nil {
			return cp, fmt.Errorf("listening on --port=%d for kube-apiserver: %w", o.port, err)
		}
	} else if apiListener, err = listenLoopback(previous.APIServer); err != nil {
		return cp, fmt.Errorf("listening on a free port for kube-apiserver: %w", err)
	}
	apiPort := apiListener.Addr().(*net.TCPAddr).Port
	cp.serverURL = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))

	adminListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		apiListener.Close()
		return cp, fmt.Errorf("listening on a free port for the admin endpoint: %w", err)
	}
	cp.adminURL = "http://" + adminListener.Addr().String()

	if err := (ports{APIServer: apiPort, EtcdClient: etcdClientPort, EtcdPeer: etcdPeerPort}).save(portsPath); err != nil {
		klog.ErrorS(err, "Could not remember the ports for a restart", "path", portsPath)
	}

	apiCtx, apiCancel := context.WithCancel(context.Background())
	cp.apiCancel = apiCancel
	server, err := newAPIServer(apiCtx, apiserverFlags(o, p, cp.etcdURL), apiListener)
	if err != nil {
		close(cp.apiserverStopped)
		apiListener.Close()
		adminListener.Close()
		return cp, err
	}
	done := make(chan error, 1)
	go server.run(apiCtx, done)
	go func() {
		cp.apiserverErr = <-done
		close(cp.apiserverStopped)
	}()

	admin := &rest.Config{
		Host: cp.serverURL,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   p.caCert,
			CertFile: p.adminCert,
			KeyFile:  p.adminKey,
		},
		QPS:   100,
		Burst: 200,
	}
	if err := cp.waitForReady(startCtx, admin); err != nil {
		adminListener.Close()
		return cp, err
	}
	klog.InfoS("kube-apiserver is ready", "url", cp.serverURL, "elapsed", time.Since(began))

	if err := writeKubeconfig(o.kubeconfigOut, cp.serverURL, p); err != nil {
		adminListener.Close()
		return cp, fmt.Errorf("writing the admin kubeconfig to %s: %w", o.kubeconfigOut, err)
	}

	ctrlCtx, ctrlCancel := context.WithCancel(context.Background())
	cp.ctrlCancel = ctrlCancel
	cp.controllers, err = startControllers(ctrlCtx, admin, o.gcSyncPeriod)
	if err != nil {
		adminListener.Close()
		return cp, fmt.Errorf("starting the garbage-collector and namespace controllers: %w", err)
	}
	if !cp.controllers.waitForGCSync(startCtx, 30*time.Second) {
		klog.InfoS("The garbage collector has not watched every resource yet; continuing")
	}

	cp.admin = startAdmin(adminListener, cp.etcdClient)
	cp.adminShutdown = cp.admin.shutdown
	klog.InfoS("Control plane is ready", "elapsed", time.Since(began))
	return cp, nil
}

// waitForReady polls /readyz until it answers 200 and the default namespace exists.
func (cp *controlPlane) waitForReady(ctx context.Context, config *rest.Config) error {
	client, err := clientset.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("creating the admin client: %w", err)
	}
	var last string
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-cp.apiserverStopped:
			return fmt.Errorf("kube-apiserver stopped while starting: %w", errOrNil(cp.apiserverErr))
		case err := <-cp.etcd.Err():
			return fmt.Errorf("embedded etcd failed while kube-apiserver was starting: %w", errOrNil(err))
		case <-ctx.Done():
			return fmt.Errorf("%w (last /readyz answer: %s)", context.Cause(ctx), last)
		case <-ticker.C:
		}
		status := 0
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status).Raw()
		if status != http.StatusOK {
			if status != 0 {
				last = fmt.Sprintf("HTTP %d, failing checks: %s", status, failingChecks(body))
			} else if err != nil {
				last = err.Error()
			}
			continue
		}
		_, err = client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			last = "getting namespace default: " + err.Error()
		}
	}
}

// failingChecks lists the "[-]name failed: reason" lines of a /readyz or /healthz answer.
func failingChecks(body []byte) string {
	var failing []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "[-]") {
			failing = append(failing, strings.TrimPrefix(line, "[-]"))
		}
	}
	if len(failing) == 0 {
		return "none listed"
	}
	return strings.Join(failing, "; ")
}

// shutdown stops the parts in reverse order of their start, each bounded in time.
func (cp *controlPlane) shutdown() {
	if cp.admin != nil {
		cp.admin.close()
	}
	if cp.ctrlCancel != nil {
		cp.ctrlCancel()
		waitBounded("the controllers", 5*time.Second, func() { cp.controllers.wg.Wait() })
	}
	if cp.apiCancel != nil {
		cp.apiCancel()
		waitBounded("kube-apiserver", 30*time.Second, func() { <-cp.apiserverStopped })
		if cp.apiserverErr != nil && !errors.Is(cp.apiserverErr, context.Canceled) {
			klog.ErrorS(cp.apiserverErr, "kube-apiserver stopped with an error")
		}
	}
	if cp.etcdClient != nil {
		_ = cp.etcdClient.Close()
	}
	if cp.etcd != nil {
		waitBounded("embedded etcd", 10*time.Second, cp.etcd.Close)
	}
	klog.Flush()
}

func waitBounded(what string, limit time.Duration, f func()) {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		klog.InfoS("Gave up waiting for a part to stop", "part", what, "limit", limit)
	}
}
