package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// ports are the TCP ports of one run, remembered in DATA_DIR/ports.json so that a
// restart on the same data dir serves on the same addresses when they are still free.
type ports struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

func loadPorts(path string) ports {
	var p ports
	data, err := os.ReadFile(path)
	if err != nil {
		return p
	}
	if json.Unmarshal(data, &p) != nil {
		return ports{}
	}
	return p
}

func (p ports) save(path string) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// listenLoopback listens on 127.0.0.1:preferred when preferred is non-zero and free,
// otherwise on a free port.
func listenLoopback(preferred int) (net.Listener, error) {
	if preferred > 0 {
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(preferred))); err == nil {
			return l, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// freePort returns a port that was free a moment ago. etcd's embed package opens its
// own listeners, so there is a short window in which another process could take it;
// on loopback with kernel-chosen ephemeral ports that is unlikely.
func freePort(preferred int) (int, error) {
	l, err := listenLoopback(preferred)
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// startEtcd starts an embedded single-member etcd with data in dir, fsync off.
func startEtcd(ctx context.Context, dir string, clientPort, peerPort int, logLevel string) (*embed.Etcd, string, error) {
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}

	cfg := embed.NewConfig()
	cfg.Name = "rekon"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = "rekon-controlplane"
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = logLevel
	cfg.LogOutputs = []string{"stderr"}
	// kube-apiserver compacts etcd itself (every 5 minutes by default).
	cfg.AutoCompactionRetention = "0"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("starting embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("embedded etcd failed while starting: %w", err)
	case <-ctx.Done():
		e.Server.Stop()
		e.Close()
		return nil, "", fmt.Errorf("stopped while etcd was starting: %w", context.Cause(ctx))
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, "", errors.New("embedded etcd was not ready after 60s")
	}
	return e, clientURL.String(), nil
}

// compactEtcd compacts etcd at its current revision (physically, so older revisions
// are gone when it returns) and answers that revision.
func compactEtcd(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, "/rekon-controlplane/compact-probe")
	if err != nil {
		return 0, fmt.Errorf("reading etcd's current revision: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			// Nothing was written since the last compaction at this revision.
			return rev, nil
		}
		return rev, fmt.Errorf("compacting etcd at revision %d: %w", rev, err)
	}
	return rev, nil
}

func etcdDataDir(dataDir string) string { return filepath.Join(dataDir, "etcd") }
