// Command pilot-discovery is istiod 1.31's own (release-1.31, see PIN) pilot-discovery command (the same root command, flags and
// server from istio.io/istio/pilot/cmd/pilot-discovery/app and pilot/pkg/bootstrap), with one difference when
// ISTIOD_CONFORMANCE_FAKE_KUBE=1: the `discovery` command gives istiod Istio's in-memory fake Kubernetes
// client (kube.NewFakeClient, which istiod's own tests pass to bootstrap.NewServer) instead of none.
//
// Why: since the krt rewrite of the ServiceEntry controller, istiod dereferences its multicluster controller
// (serviceentry.newController -> multiclusterController.ConfigCluster()), which exists only with a Kubernetes
// client. With --registries= and only xds:// config sources, upstream istiod 1.31 panics at start-up:
//
//	panic: runtime error: invalid memory address or nil pointer dereference
//	istio.io/istio/pkg/kube/multicluster.(*Controller).ConfigCluster(...) secretcontroller.go:246
//	istio.io/istio/pilot/pkg/serviceregistry/serviceentry.newController(...) controller.go:243
//
// The fake cluster is empty, --registries= adds no Kubernetes service registry and configSources lists only
// the xds:// server, so every config istiod holds still comes from that server.
package main

import (
	"fmt"
	"os"
	"reflect"
	"unsafe"

	// As in upstream pilot-discovery: set GOMEMLIMIT from the cgroup limit.
	_ "github.com/KimMachineGun/automemlimit"
	"github.com/spf13/cobra"

	"istio.io/istio/pilot/cmd/pilot-discovery/app"
	"istio.io/istio/pilot/pkg/bootstrap"
	"istio.io/istio/pkg/cmd"
	"istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/log"
)

// serverArgs is the upstream command's parsed flags (app.serverArgs).
//
//go:linkname serverArgs istio.io/istio/pilot/cmd/pilot-discovery/app.serverArgs
var serverArgs *bootstrap.PilotArgs

func main() {
	log.EnableKlogWithCobra()
	rootCmd := app.NewRootCommand()
	if os.Getenv("ISTIOD_CONFORMANCE_FAKE_KUBE") == "1" {
		for _, c := range rootCmd.Commands() {
			if c.Name() == "discovery" {
				c.RunE = func(c *cobra.Command, _ []string) error { return runDiscovery(c) }
			}
		}
	}
	if err := rootCmd.Execute(); err != nil {
		log.Error(err)
		os.Exit(-1)
	}
}

// runDiscovery is upstream's discovery RunE (pilot/cmd/pilot-discovery/app/cmd.go) plus the fake client.
func runDiscovery(c *cobra.Command) error {
	cmd.PrintFlags(c.Flags())
	stop := make(chan struct{})
	log.Warnf("ISTIOD_CONFORMANCE_FAKE_KUBE=1: istiod uses an in-memory fake (empty) Kubernetes client")
	discoveryServer, err := bootstrap.NewServer(serverArgs, withFakeKube)
	if err != nil {
		return fmt.Errorf("failed to create discovery service: %v", err)
	}
	if err := discoveryServer.Start(stop); err != nil {
		return fmt.Errorf("failed to start discovery service: %v", err)
	}
	cmd.WaitSignal(stop)
	discoveryServer.WaitUntilCompletion()
	return nil
}

// withFakeKube sets the server's (unexported) kubeClient, as bootstrap's own tests do from inside the package.
func withFakeKube(s *bootstrap.Server) {
	f := reflect.ValueOf(s).Elem().FieldByName("kubeClient")
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(kube.NewFakeClient()))
}
