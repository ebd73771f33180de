package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	namespacecontroller "k8s.io/kubernetes/pkg/controller/namespace"
)

// controllers are the kube-controller-manager controllers this control plane runs: the
// garbage collector (owner references) and the namespace controller (namespace deletion).
type controllers struct {
	gc *garbagecollector.GarbageCollector
	wg sync.WaitGroup
}

// clientConfig copies base with a user agent naming the controller and generous limits.
func clientConfig(base *rest.Config, userAgent string) *rest.Config {
	c := rest.CopyConfig(base)
	c.QPS = 500
	c.Burst = 1000
	c.UserAgent = "rekon-controlplane/" + userAgent
	return c
}

// startControllers starts the garbage-collector and namespace controllers the way
// kube-controller-manager does, with clients of the admin identity in base.
func startControllers(ctx context.Context, base *rest.Config, gcSyncPeriod time.Duration) (*controllers, error) {
	c := &controllers{}

	sharedClient, err := clientset.NewForConfig(clientConfig(base, "shared-informers"))
	if err != nil {
		return nil, fmt.Errorf("shared informer client: %w", err)
	}
	metadataForInformers, err := metadata.NewForConfig(clientConfig(base, "metadata-informers"))
	if err != nil {
		return nil, fmt.Errorf("metadata informer client: %w", err)
	}
	// kube-controller-manager resyncs its informers every 12-24h; the namespace
	// controller asks for a 5-minute resync of its handler, which needs a non-zero one.
	const resync = 12 * time.Hour
	sharedInformers := informers.NewSharedInformerFactory(sharedClient, resync)
	metadataInformers := metadatainformer.NewSharedInformerFactory(metadataForInformers, resync)

	// Garbage collector.
	gcConfig := clientConfig(base, "generic-garbage-collector")
	gcClient, err := clientset.NewForConfig(gcConfig)
	if err != nil {
		return nil, fmt.Errorf("garbage collector client: %w", err)
	}
	gcMetadata, err := metadata.NewForConfig(gcConfig)
	if err != nil {
		return nil, fmt.Errorf("garbage collector metadata client: %w", err)
	}
	restMapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(gcClient.Discovery()))
	informersStarted := make(chan struct{})
	gc, err := garbagecollector.NewGarbageCollector(
		ctx,
		gcClient,
		gcMetadata,
		restMapper,
		garbagecollector.DefaultIgnoredResources(),
		informerfactory.NewInformerFactory(sharedInformers, metadataInformers),
		informersStarted,
	)
	if err != nil {
		return nil, fmt.Errorf("creating the garbage collector: %w", err)
	}
	c.gc = gc
	// A separate discovery client for Sync: it must not share the REST mapper's cache.
	gcDiscovery, err := clientset.NewForConfig(clientConfig(base, "garbage-collector-discovery"))
	if err != nil {
		return nil, fmt.Errorf("garbage collector discovery client: %w", err)
	}

	// Namespace controller (its clients get higher limits, as in kube-controller-manager).
	nsConfig := clientConfig(base, "namespace-controller")
	nsConfig.QPS, nsConfig.Burst = 2000, 5000
	nsClient, err := clientset.NewForConfig(nsConfig)
	if err != nil {
		return nil, fmt.Errorf("namespace controller client: %w", err)
	}
	nsMetadata, err := metadata.NewForConfig(nsConfig)
	if err != nil {
		return nil, fmt.Errorf("namespace controller metadata client: %w", err)
	}
	nsController := namespacecontroller.NewNamespaceController(
		ctx,
		nsClient,
		nsMetadata,
		nsClient.Discovery().ServerPreferredNamespacedResources,
		sharedInformers.Core().V1().Namespaces(),
		5*time.Minute,
		v1.FinalizerKubernetes,
	)

	// Start informers only after every controller registered its informers.
	sharedInformers.Start(ctx.Done())
	metadataInformers.Start(ctx.Done())
	close(informersStarted)

	c.wg.Go(func() {
		wait.Until(restMapper.Reset, gcSyncPeriod, ctx.Done())
	})
	c.wg.Go(func() { gc.Run(ctx, 20, gcSyncPeriod) })
	c.wg.Go(func() { gc.Sync(ctx, gcDiscovery.Discovery(), gcSyncPeriod) })
	c.wg.Go(func() { nsController.Run(ctx, 10) })
	c.wg.Go(func() {
		<-ctx.Done()
		sharedInformers.Shutdown()
		metadataInformers.Shutdown()
	})
	return c, nil
}

// waitForGCSync waits until the garbage collector watches every deletable resource, so
// that owner deletions right after the ready line are collected promptly.
func (c *controllers) waitForGCSync(ctx context.Context, timeout time.Duration) bool {
	logger := klog.FromContext(ctx)
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return c.gc.IsSynced(logger), nil
	})
	return err == nil
}
