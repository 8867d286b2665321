// Command cert-manager-controller runs cert-manager's own controllers, in one process, against
// the API server named by --kubeconfig. It exists because cert-manager's controller binary is a
// module of its own with a replace directive, so it cannot be installed from the module proxy;
// its public packages can, and this is the wiring its cmd/controller does, minus what a test
// run on loopback does not need (leader election, metrics and health servers, config files,
// HTTP-01, Gateway API, Vault and Venafi).
//
// The set of controllers is enough for ACME DNS-01 issuance with Issuers and ClusterIssuers
// (and for the selfSigned and ca issuers); --controllers narrows or changes it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/acmechallenges"
	"github.com/cert-manager/cert-manager/pkg/controller/acmeorders"
	cracme "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/acme"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Issuer types, registered for the issuers and clusterissuers controllers.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/acme"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// defaultControllers: what issuing a Certificate through an ACME (or selfSigned or ca) Issuer
// or ClusterIssuer takes. Without the approver, no CertificateRequest is ever signed.
var defaultControllers = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	trigger.ControllerName,
	issuing.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
	approver.ControllerName,
	cracme.CRControllerName,
	crselfsigned.CRControllerName,
	crca.CRControllerName,
	acmeorders.ControllerName,
	acmechallenges.ControllerName,
}

// listFlag is a comma-separated list flag that may also be repeated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

type options struct {
	kubeconfig               string
	namespace                string
	clusterResourceNamespace string
	nameservers              listFlag
	nameserversOnly          bool
	checkRetryPeriod         time.Duration
	maxConcurrentChallenges  int
	workers                  int
	qps                      float64
	burst                    int
	ownerRef                 bool
	minBackoff               time.Duration
	maxBackoff               time.Duration
	leaderElect              bool
	controllers              listFlag
}

func parseFlags() *options {
	o := &options{}
	fs := flag.CommandLine
	klog.InitFlags(fs) // -v=N for more detail (cert-manager logs at 2 = info, 4 = debug)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file of the API server to run against")
	fs.StringVar(&o.namespace, "namespace", "", "only watch this namespace (default: all; the clusterissuers controller then does not run)")
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "kube-system", "namespace that holds the Secrets ClusterIssuers refer to")
	fs.Var(&o.nameservers, "dns01-recursive-nameservers", "host:port of resolvers for the DNS-01 self check, comma separated")
	fs.BoolVar(&o.nameserversOnly, "dns01-recursive-nameservers-only", false, "ask only --dns01-recursive-nameservers, never the zone's authoritative servers")
	fs.DurationVar(&o.checkRetryPeriod, "dns01-check-retry-period", 10*time.Second, "time between DNS-01 self checks")
	fs.IntVar(&o.maxConcurrentChallenges, "max-concurrent-challenges", 60, "challenges processed at once")
	fs.IntVar(&o.workers, "concurrent-workers", 5, "workers per controller")
	fs.Float64Var(&o.qps, "kube-api-qps", 20, "client-side rate limit when the API server has no priority and fairness")
	fs.IntVar(&o.burst, "kube-api-burst", 50, "client-side burst when the API server has no priority and fairness")
	fs.BoolVar(&o.ownerRef, "enable-certificate-owner-ref", false, "make each Certificate the owner of its Secret")
	fs.DurationVar(&o.minBackoff, "certificate-request-minimum-backoff-duration", time.Hour, "wait after a failed issuance before the first retry (doubles each time)")
	fs.DurationVar(&o.maxBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour, "longest wait between retries of a failed issuance")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "accepted for compatibility; must be false (one replica, no election)")
	fs.Var(&o.controllers, "controllers", "controllers to run, comma separated (default: "+strings.Join(defaultControllers, ",")+")")
	flag.Parse()
	if fs.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments: %v", fs.Args()))
	}
	if o.leaderElect {
		fail(errors.New("--leader-elect is not supported: this runs exactly one replica"))
	}
	if len(o.controllers) == 0 {
		o.controllers = defaultControllers
	}
	if o.kubeconfig == "" {
		fail(errors.New("--kubeconfig (or $KUBECONFIG) is required"))
	}
	return o
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
	os.Exit(1)
}

func main() {
	opts := parseFlags()
	logf.InitLogs()
	defer logf.FlushLogs()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	if err := run(ctx, opts); err != nil {
		logf.FlushLogs()
		fail(err)
	}
}

func run(ctx context.Context, opts *options) error {
	log := logf.FromContext(ctx)

	known := controller.Known()
	for _, n := range opts.controllers {
		if _, ok := known[n]; !ok {
			names := make([]string, 0, len(known))
			for k := range known {
				names = append(names, k)
			}
			sort.Strings(names)
			return fmt.Errorf("unknown controller %q (known here: %s)", n, strings.Join(names, ", "))
		}
	}
	if opts.namespace != "" && slices.Contains(opts.controllers, clusterissuers.ControllerName) {
		opts.controllers = slices.DeleteFunc(slices.Clone(opts.controllers), func(n string) bool {
			return n == clusterissuers.ControllerName
		})
		log.Info("not running the clusterissuers controller: scoped to one namespace", "namespace", opts.namespace)
	}

	nameservers := []string(opts.nameservers)
	log.Info("configured acme dns01 nameservers", "nameservers", nameservers, "only", opts.nameserversOnly)

	g, gctx := errgroup.WithContext(ctx)
	factory, err := controller.NewContextFactory(gctx, controller.ContextOptions{
		Kubeconfig:         opts.kubeconfig,
		KubernetesAPIQPS:   float32(opts.qps),
		KubernetesAPIBurst: opts.burst,
		Namespace:          opts.namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: opts.clusterResourceNamespace,
		},
		ACMEOptions: controller.ACMEOptions{
			// HTTP-01 is not used here; these are cert-manager's defaults, for completeness.
			HTTP01SolverResourceRequestCPU:    resource.MustParse("10m"),
			HTTP01SolverResourceRequestMemory: resource.MustParse("64Mi"),
			HTTP01SolverResourceLimitsCPU:     resource.MustParse("100m"),
			HTTP01SolverResourceLimitsMemory:  resource.MustParse("64Mi"),
			ACMEHTTP01SolverRunAsNonRoot:      true,

			// An empty list makes cert-manager use the system resolvers, as upstream does.
			DNS01Nameservers:        nameservers,
			DNS01CheckAuthoritative: !opts.nameserversOnly,
			DNS01CheckRetryPeriod:   opts.checkRetryPeriod,
		},
		SchedulerOptions: controller.SchedulerOptions{
			MaxConcurrentChallenges: opts.maxConcurrentChallenges,
		},
		IngressShimOptions: controller.IngressShimOptions{
			DefaultAutoCertificateAnnotations: []string{"kubernetes.io/tls-acme"},
		},
		CertificateOptions: controller.CertificateOptions{
			EnableOwnerRef:                           opts.ownerRef,
			CertificateRequestMinimumBackoffDuration: opts.minBackoff,
			CertificateRequestMaximumBackoffDuration: opts.maxBackoff,
		},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	base, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	// Constructing a controller registers the informers it needs, so construct them all
	// before the informer factories start.
	for _, n := range opts.controllers {
		iface, err := known[n](factory)
		if err != nil {
			return fmt.Errorf("starting controller %s: %w", n, err)
		}
		log.V(logf.DebugLevel).Info("starting controller", "controller", n)
		g.Go(func() error { return iface.Run(opts.workers, gctx) })
	}
	base.SharedInformerFactory.Start(gctx.Done())
	base.KubeSharedInformerFactory.Start(gctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(gctx.Done())
	log.Info("controllers started", "controllers", strings.Join(opts.controllers, ","))

	err = g.Wait()
	base.HTTP01ResourceMetadataInformersFactory.Shutdown()
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("control loops exited")
	return nil
}
