package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"
)

// adminServer is a plain-HTTP endpoint on loopback for tests:
//
//	POST /compact   compacts etcd at its current revision; answers {"revision": N}
//	POST /shutdown  shuts the control plane down cleanly; answers {"shutdown": true}
//	GET  /healthz   answers ok
type adminServer struct {
	server   *http.Server
	shutdown chan struct{}
	once     sync.Once
}

func startAdmin(listener net.Listener, etcd *clientv3.Client) *adminServer {
	a := &adminServer{shutdown: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /compact", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		rev, err := compactEtcd(ctx, etcd)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		klog.InfoS("Compacted etcd", "revision", rev)
		writeJSON(w, http.StatusOK, map[string]any{"revision": rev})
	})
	mux.HandleFunc("POST /shutdown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"shutdown": true})
		a.once.Do(func() { close(a.shutdown) })
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	a.server = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.server.Serve(listener); err != nil && err != http.ErrServerClosed {
			klog.ErrorS(err, "Admin endpoint stopped")
		}
	}()
	return a
}

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.server.Shutdown(ctx)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
