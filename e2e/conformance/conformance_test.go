// Package conformance runs cert-manager's own DNS01 conformance suite
// (github.com/cert-manager/cert-manager/test/acme, strict mode), unchanged, against
// kube-acme-dns.
//
// The suite drives a Go webhook.Solver and checks the records through a DNS server. The solver
// here is a thin forwarder: each Present and CleanUp becomes a ChallengePayload POSTed to
// /apis/acme.acmedns.io/v1alpha1/acme-dns on the kube-apiserver named by KAD_KUBECONFIG, the
// same request cert-manager's webhook client sends, which the aggregation layer hands to our
// server. The suite then queries KAD_DNS (our responder) for the TXT values.
//
// Environment:
//
//	KAD_KUBECONFIG          kubeconfig of the API server that serves acme.acmedns.io (required)
//	KAD_ZONE                zone our server is authoritative for, e.g. auth.example.test. (required)
//	KAD_FQDN                an account's FQDN, e.g. <label>.auth.example.test. (required)
//	KAD_DNS                 host:port of our DNS responder, e.g. 127.0.0.1:5353 (required)
//	KAD_RESOURCE_NAMESPACE  resourceNamespace to send; the suite's own namespaces exist only in
//	                        the suite's private API server (optional)
//	KAD_POLL_INTERVAL       how often the suite queries KAD_DNS (optional, default 250ms)
//	KAD_PROPAGATION_LIMIT   how long it waits for a record to appear or go (optional, default 60s)
//
// The suite also starts a control plane of its own (controller-runtime envtest: etcd and
// kube-apiserver) for its namespaces; run.sh points it at the cached binaries.
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/cert-manager/cert-manager/pkg/acme/webhook"
	whapi "github.com/cert-manager/cert-manager/pkg/acme/webhook/apis/acme/v1alpha1"
	acmetest "github.com/cert-manager/cert-manager/test/acme"
)

const (
	solverGroup    = "acme.acmedns.io"
	solverVersion  = "v1alpha1"
	solverResource = "acme-dns"
	callTimeout    = 30 * time.Second
)

// forwardingSolver is a webhook.Solver that hands every call to kube-acme-dns through the
// kube-apiserver aggregation layer.
type forwardingSolver struct {
	client    *rest.RESTClient
	namespace string // overrides ChallengeRequest.ResourceNamespace when not empty
	logf      func(format string, args ...any)
}

var _ webhook.Solver = (*forwardingSolver)(nil)

func newForwardingSolver(kubeconfig, namespace string, logf func(string, ...any)) (*forwardingSolver, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.APIPath = "/apis"
	cfg.GroupVersion = &schema.GroupVersion{Group: solverGroup, Version: solverVersion}
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	cl, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building REST client for %s: %w", cfg.Host, err)
	}
	return &forwardingSolver{client: cl, namespace: namespace, logf: logf}, nil
}

func (s *forwardingSolver) Name() string { return solverResource }

// Initialize receives the suite's own envtest API server; the records live behind ours.
func (s *forwardingSolver) Initialize(_ *rest.Config, _ <-chan struct{}) error { return nil }

func (s *forwardingSolver) Present(ch *whapi.ChallengeRequest) error {
	return s.call(whapi.ChallengeActionPresent, ch)
}

func (s *forwardingSolver) CleanUp(ch *whapi.ChallengeRequest) error {
	return s.call(whapi.ChallengeActionCleanUp, ch)
}

// call sends ch as cert-manager's webhook client does: a copy of the request with the action
// set, inside a ChallengePayload, POSTed to the solver resource.
func (s *forwardingSolver) call(action whapi.ChallengeAction, ch *whapi.ChallengeRequest) error {
	req := ch.DeepCopy()
	req.Action = action
	if s.namespace != "" {
		req.ResourceNamespace = s.namespace
	}
	payload := map[string]any{
		"apiVersion": "acme.cert-manager.io/v1alpha1",
		"kind":       "ChallengePayload",
		"request":    req,
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("%s: encoding ChallengePayload: %w", action, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	path := "/apis/" + solverGroup + "/" + solverVersion + "/" + solverResource
	result := s.client.Post().AbsPath(path).
		SetHeader("Content-Type", "application/json").
		SetHeader("Accept", "application/json").
		Body(body).
		Do(ctx)
	var code int
	result.StatusCode(&code)
	raw, httpErr := result.Raw()
	// client-go keeps neither the code nor the body of an error reply that is not JSON (such
	// as the API server's "404 page not found"); the code is still in the error it builds.
	var status apierrors.APIStatus
	if code == 0 && errors.As(httpErr, &status) {
		code = int(status.Status().Code)
	}
	reply := oneLine(raw)
	if httpErr != nil {
		reply = strings.TrimSpace(reply + " (" + httpErr.Error() + ")")
	}
	s.logf("%s %s key=%q fqdn=%s namespace=%q -> HTTP %d %s",
		action, path, req.Key, req.ResolvedFQDN, req.ResourceNamespace, code, reply)

	var pl whapi.ChallengePayload
	if len(raw) > 0 && json.Unmarshal(raw, &pl) == nil && pl.Response != nil {
		if pl.Response.Success && httpErr == nil {
			return nil
		}
		msg := ""
		if pl.Response.Result != nil {
			msg = pl.Response.Result.Message
		}
		if !pl.Response.Success {
			if msg == "" {
				return fmt.Errorf("%s failed (HTTP %d): success is false and status.message is empty", action, code)
			}
			return fmt.Errorf("%s failed (HTTP %d): %s", action, code, msg)
		}
	}
	if httpErr != nil {
		return fmt.Errorf("%s: HTTP %d from %s: %w", action, code, path, httpErr)
	}
	return fmt.Errorf("%s: HTTP %d from %s with no ChallengePayload response: %s", action, code, path, oneLine(raw))
}

func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 600 {
		s = s[:600] + "..."
	}
	return s
}

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s must be set", name)
	}
	return v
}

func durationEnv(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q is not a positive duration", name, v)
	}
	return d
}

func TestConformance(t *testing.T) {
	kubeconfig := requireEnv(t, "KAD_KUBECONFIG")
	zone := requireEnv(t, "KAD_ZONE")
	fqdn := requireEnv(t, "KAD_FQDN")
	dnsServer := requireEnv(t, "KAD_DNS")
	poll := durationEnv(t, "KAD_POLL_INTERVAL", 250*time.Millisecond)
	limit := durationEnv(t, "KAD_PROPAGATION_LIMIT", 60*time.Second)

	// The solver logs each call on stdout, in line with the suite's own -test.v output.
	logger := log.New(os.Stdout, "    solver: ", log.Lmicroseconds)
	solver, err := newForwardingSolver(kubeconfig, os.Getenv("KAD_RESOURCE_NAMESPACE"), logger.Printf)
	if err != nil {
		t.Fatal(err)
	}

	fixture := acmetest.NewFixture(solver,
		acmetest.SetResolvedZone(zone),
		acmetest.SetResolvedFQDN(fqdn),
		// Every check goes to this one server. With useAuthoritative=false the suite queries it
		// directly; with true it would look up the zone's NS names and query them on port 53.
		acmetest.SetDNSServer(dnsServer),
		acmetest.SetUseAuthoritative(false),
		// Strict: two keys on one name, and cleaning up one keeps the other.
		acmetest.SetStrict(true),
		acmetest.SetPollInterval(poll),
		acmetest.SetPropagationLimit(limit),
		// Our solver takes no configuration.
		acmetest.SetConfig(map[string]any{}),
	)
	// RunConformance is setup + RunBasic + RunExtended, and each of those starts a control
	// plane of its own; calling the two directly runs the same tests with one fewer.
	fixture.RunBasic(t)
	fixture.RunExtended(t)
}
