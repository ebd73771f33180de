package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiserverFlags are the kube-apiserver flags of a local, single-node control plane.
func apiserverFlags(o *settings, p pki, etcdURL string) []string {
	flags := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingK,
		"--client-ca-file=" + p.caCert,
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		// No service-account token controller runs here; pods are never scheduled.
		"--disable-admission-plugins=ServiceAccount",
		// No default route and no other apiservers: do not publish endpoints.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=" + strconv.Itoa(o.verbosity),
		"--watch-cache=" + strconv.FormatBool(o.watchCache),
	}
	return append(flags, o.apiserverArgs...)
}

// apiserver is a kube-apiserver built and ready to run.
type apiserver struct {
	prepare func() (preparedRunner, error)
}

type preparedRunner interface {
	Run(ctx context.Context) error
}

// newAPIServer builds kube-apiserver the way its command does (options from flags →
// complete → validate → config → server chain), serving on listener.
func newAPIServer(ctx context.Context, args []string, listener net.Listener) (*apiserver, error) {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags %q: %w", args, err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-apiserver feature gates and emulated version: %w", err)
	}
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return nil, fmt.Errorf("kube-apiserver logging options: %w", err)
	}
	// The loopback clients of kube-apiserver should not log warnings they caused.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port

	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("completing kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("invalid kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	config, err := app.NewConfig(completed)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver configuration: %w", err)
	}
	completedConfig, err := config.Complete()
	if err != nil {
		return nil, fmt.Errorf("completing kube-apiserver configuration: %w", err)
	}
	server, err := app.CreateServerChain(completedConfig)
	if err != nil {
		return nil, fmt.Errorf("creating the kube-apiserver server chain: %w", err)
	}
	return &apiserver{prepare: func() (preparedRunner, error) {
		prepared, err := server.PrepareRun()
		if err != nil {
			return nil, err
		}
		return prepared, nil
	}}, nil
}

// run prepares and runs the server until ctx ends; done receives its result.
func (a *apiserver) run(ctx context.Context, done chan<- error) {
	prepared, err := a.prepare()
	if err != nil {
		done <- fmt.Errorf("preparing kube-apiserver: %w", err)
		return
	}
	done <- prepared.Run(ctx)
}
