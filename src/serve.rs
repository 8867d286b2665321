//! `kube-acme-dns serve`: starts the roles its flags enable, in one process.
//!
//! Every replica runs the account watch, which feeds the [`AccountIndex`] the DNS
//! responder answers from, and serves health and metrics.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use kube::{Api, api::ListParams};
use prometheus::Registry;
use tokio::task::JoinError;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    compat::{
        self, ApiArgs,
        store::{CredentialIndex, KubeStore},
    },
    controller::{self, ControllerArgs, ControllerConfig, ControllerMetrics},
    dns::{Zone, ZoneConfig, metrics::DnsMetrics, rrl::RrlConfig, server::DnsSockets},
    health::{self, Health},
    http::Limits,
    index::AccountIndex,
    txt::TxtWriter,
    watch,
    webhook::{self, AccountResolver, Solver, WebhookArgs},
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The authoritative DNS responder.
    Dns,
    /// The account controller (leader-elected: one replica at a time reconciles).
    Controller,
    /// The cert-manager DNS-01 webhook solver (needs a serving certificate).
    Webhook,
    /// The acme-dns compatible HTTP API (`/register`, `/update`, `/health`).
    Api,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Roles to run, comma-separated. Every role also runs the account watch and the
    /// health/metrics endpoint.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_ROLES",
        value_enum,
        value_delimiter = ',',
        default_value = "dns,controller"
    )]
    pub roles: Vec<Role>,

    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_addr: SocketAddr,

    /// Watch AcmeDnsAccounts in this namespace only; all namespaces when unset.
    #[arg(long, env = "KUBE_ACME_DNS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How every AcmeDnsAccount is listed at start and after the API server lost the
    /// watch's history: `whole` (one request, the least work for kube-apiserver; a list cut
    /// off moves on to `stream`), `stream` (a watch that starts with every account, with no
    /// time limit; refused by API servers without the WatchList feature, which move on to
    /// `pages`) or `pages` (500 at a time; read from etcd when no account was written since
    /// its last compaction).
    #[arg(
        long,
        env = "KUBE_ACME_DNS_ACCOUNT_LIST",
        value_enum,
        default_value = "whole"
    )]
    pub account_list: watch::ListBy,

    #[command(flatten)]
    pub dns: DnsArgs,

    #[command(flatten)]
    pub controller: ControllerArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    /// Seconds between SIGTERM and stopping: /readyz fails at once, so load balancers
    /// drop this replica, while DNS and every HTTP server keep answering until they
    /// have. Then in-flight work drains and the process exits. The Helm chart sets it
    /// from shutdownDelaySeconds.
    #[arg(long, env = "KUBE_ACME_DNS_SHUTDOWN_DELAY", default_value_t = 0)]
    pub shutdown_delay: u64,

    /// This replica's name in the leader election Lease and in Events. Defaults to the
    /// pod name (POD_NAME or HOSTNAME) with a random suffix.
    #[arg(long, env = "KUBE_ACME_DNS_IDENTITY")]
    pub identity: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    /// The zone this server is authoritative for; accounts are served at
    /// `<subdomain>.<zone>`.
    #[arg(long, env = "KUBE_ACME_DNS_ZONE", default_value = "auth.example.test")]
    pub zone: String,

    /// UDP and TCP address of the DNS responder. `0.0.0.0:<port>` also listens on
    /// `[::]:<port>` for IPv6 (IPv4 only on a host without IPv6). On a wildcard address,
    /// each UDP answer leaves from the address its query was sent to.
    #[arg(long, env = "KUBE_ACME_DNS_DNS_ADDR", default_value = "127.0.0.1:5353")]
    pub dns_addr: SocketAddr,

    /// UDP sockets (and threads) answering queries; 0 means one per CPU.
    #[arg(long, env = "KUBE_ACME_DNS_DNS_THREADS", default_value_t = 0)]
    pub dns_threads: usize,

    /// Name servers in the apex NS records, comma-separated; the first is the SOA MNAME.
    /// Defaults to `ns.<zone>`.
    #[arg(
        long = "nameserver",
        env = "KUBE_ACME_DNS_NAMESERVERS",
        value_delimiter = ','
    )]
    pub nameservers: Vec<String>,

    /// Addresses answered (A/AAAA) for name servers inside the zone: the LoadBalancer's
    /// public address. Comma-separated.
    #[arg(
        long = "nameserver-address",
        env = "KUBE_ACME_DNS_NAMESERVER_ADDRESSES",
        value_delimiter = ','
    )]
    pub nameserver_addresses: Vec<IpAddr>,

    /// SOA RNAME as a name (`hostmaster.example.org` stands for hostmaster@example.org).
    /// Defaults to `hostmaster.<zone>`.
    #[arg(long, env = "KUBE_ACME_DNS_HOSTMASTER")]
    pub hostmaster: Option<String>,

    /// TTL of TXT answers, in seconds. Short, so a new challenge value is seen at once.
    #[arg(long, env = "KUBE_ACME_DNS_TXT_TTL", default_value_t = 1)]
    pub txt_ttl: u32,

    /// TTL of negative answers (the SOA minimum), in seconds.
    #[arg(long, env = "KUBE_ACME_DNS_NEGATIVE_TTL", default_value_t = 60)]
    pub negative_ttl: u32,

    /// A static record, `NAME TYPE DATA`, NAME relative to the zone or `@`; TYPE is A,
    /// AAAA, TXT or CAA. Repeat the flag (or separate with `;` in the environment).
    #[arg(long = "record", env = "KUBE_ACME_DNS_RECORDS", value_delimiter = ';')]
    pub records: Vec<String>,

    /// This replica's identity, answered in the NSID option to queries that ask for it
    /// (RFC 5001, `dig +nsid`) and as CHAOS TXT at `id.server.` and `hostname.bind.`
    /// (RFC 4892), so it shows which replica behind a load balancer answered. At most 64
    /// printable ASCII characters; empty turns both off. The Helm chart sets the pod
    /// name.
    #[arg(long, env = "KUBE_ACME_DNS_NSID", default_value = "")]
    pub nsid: String,

    /// Response rate limiting (RRL) of UDP answers: answers per second to one source
    /// prefix (see --rrl-ipv4-prefix and --rrl-ipv6-prefix), beyond which they are sent
    /// truncated or dropped (--rrl-slip), so the server cannot be used to flood an
    /// address that forged queries name as their source. 0 turns RRL off. TCP answers
    /// are never limited.
    #[arg(long, env = "KUBE_ACME_DNS_RRL_RATE", default_value_t = RrlConfig::DEFAULT.rate)]
    pub rrl_rate: u32,

    /// Answers a source prefix that has been quiet may get at once before --rrl-rate
    /// applies (at least 1).
    #[arg(long, env = "KUBE_ACME_DNS_RRL_BURST", default_value_t = RrlConfig::DEFAULT.burst)]
    pub rrl_burst: u32,

    /// Of the answers over the rate, every Nth is sent truncated (TC), so a real
    /// resolver asks again over TCP, and the others are dropped; 0 drops all of them,
    /// 1 truncates all of them. At most 10.
    #[arg(long, env = "KUBE_ACME_DNS_RRL_SLIP", default_value_t = RrlConfig::DEFAULT.slip)]
    pub rrl_slip: u32,

    /// Leading bits of an IPv4 source address that make the prefix one rate applies to
    /// (8 to 32).
    #[arg(
        long,
        env = "KUBE_ACME_DNS_RRL_IPV4_PREFIX",
        default_value_t = RrlConfig::DEFAULT.ipv4_prefix
    )]
    pub rrl_ipv4_prefix: u8,

    /// Leading bits of an IPv6 source address that make the prefix one rate applies to
    /// (16 to 128).
    #[arg(
        long,
        env = "KUBE_ACME_DNS_RRL_IPV6_PREFIX",
        default_value_t = RrlConfig::DEFAULT.ipv6_prefix
    )]
    pub rrl_ipv6_prefix: u8,
}

/// Highest --rrl-rate: one answer per microsecond to a single prefix is past anything
/// worth limiting.
const RRL_MAX_RATE: u32 = 1_000_000;
const RRL_MAX_BURST: u32 = 1_000_000;
/// BIND's bound too: beyond it, truncated answers are too rare to help real resolvers.
const RRL_MAX_SLIP: u32 = 10;

impl DnsArgs {
    pub fn zone_config(&self) -> ZoneConfig {
        let mut config = ZoneConfig::new(&self.zone);
        if !self.nameservers.is_empty() {
            config.nameservers = self.nameservers.clone();
        }
        config.nameserver_addresses = self.nameserver_addresses.clone();
        if let Some(hostmaster) = &self.hostmaster {
            config.hostmaster = hostmaster.clone();
        }
        config.negative_ttl = self.negative_ttl;
        config.records = self
            .records
            .iter()
            .filter(|r| !r.trim().is_empty())
            .cloned()
            .collect();
        config.identity = self.nsid.clone();
        config
    }

    /// The response rate limiting configuration, or what to set when a value is out
    /// of range.
    pub fn rrl_config(&self) -> anyhow::Result<RrlConfig> {
        let check = |ok: bool, flag: &str, value: &str, range: &str| {
            if ok {
                Ok(())
            } else {
                let env = format!(
                    "KUBE_ACME_DNS_{}",
                    flag.trim_start_matches("--")
                        .replace('-', "_")
                        .to_uppercase()
                );
                Err(anyhow::anyhow!(
                    "{flag} is {value}: set it ({env}) to {range}"
                ))
            }
        };
        check(
            self.rrl_rate <= RRL_MAX_RATE,
            "--rrl-rate",
            &self.rrl_rate.to_string(),
            &format!(
                "answers per second from 1 to {RRL_MAX_RATE}, or 0 to turn response rate limiting off"
            ),
        )?;
        check(
            (1..=RRL_MAX_BURST).contains(&self.rrl_burst),
            "--rrl-burst",
            &self.rrl_burst.to_string(),
            &format!("1 to {RRL_MAX_BURST} answers"),
        )?;
        check(
            self.rrl_slip <= RRL_MAX_SLIP,
            "--rrl-slip",
            &self.rrl_slip.to_string(),
            &format!("0 (drop every answer over the rate) to {RRL_MAX_SLIP}"),
        )?;
        check(
            (8..=32).contains(&self.rrl_ipv4_prefix),
            "--rrl-ipv4-prefix",
            &self.rrl_ipv4_prefix.to_string(),
            "a prefix length from 8 to 32 bits",
        )?;
        check(
            (16..=128).contains(&self.rrl_ipv6_prefix),
            "--rrl-ipv6-prefix",
            &self.rrl_ipv6_prefix.to_string(),
            "a prefix length from 16 to 128 bits",
        )?;
        Ok(RrlConfig {
            rate: self.rrl_rate,
            burst: self.rrl_burst,
            slip: self.rrl_slip,
            ipv4_prefix: self.rrl_ipv4_prefix,
            ipv6_prefix: self.rrl_ipv6_prefix,
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Configuration errors first, before touching the network.
    let zone =
        Arc::new(Zone::new(&args.dns.zone_config()).context("invalid DNS zone configuration")?);
    let rrl = args
        .dns
        .rrl_config()
        .context("invalid response rate limiting configuration")?;
    if args.roles.contains(&Role::Api)
        && let Some(watched) = &args.watch_namespace
        && *watched != args.api.namespace()
    {
        // Accounts the API registers would never be seen, so their credentials would
        // never work.
        anyhow::bail!(
            "the acme-dns API registers accounts in namespace {:?} but only {watched:?} is watched: \
             set --api-namespace to {watched:?}, or watch every namespace",
            args.api.namespace()
        );
    }

    let client = crate::kube_client().await.context(
        "cannot reach Kubernetes: set KUBECONFIG, or run in a pod with a service account",
    )?;
    // Decoded without the field managers and annotations, which nothing here reads.
    let accounts: Api<watch::WatchedAccount> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    check_crd_installed(&accounts).await?;

    info!(roles = ?args.roles, "starting");
    let registry = Registry::new();
    let mut index = AccountIndex::new(args.dns.txt_ttl);
    if args.roles.contains(&Role::Controller) {
        // So that taking the Lease does not need a list of every account.
        index = index.settling(controller::settled_judge(
            args.dns.zone.clone(),
            zone.reserved_labels(),
            args.controller.txt_max_age,
        ));
    }
    let index = Arc::new(index);
    let health = Health::new(registry.clone(), index.clone())?;
    let stop = Arc::new(AtomicBool::new(false));

    // Cancelled at SIGTERM: the HTTP servers stop accepting and finish what is in
    // flight (bounded by their drain timeout) before the process exits.
    let shutdown = CancellationToken::new();
    let http_servers = TaskTracker::new();
    let http = http_servers
        .spawn(health::serve(args.metrics_addr, health.clone(), shutdown.clone()).await?);

    let dns = if args.roles.contains(&Role::Dns) {
        let threads = match args.dns.dns_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let sockets = DnsSockets::bind(args.dns.dns_addr, threads)
            .with_context(|| format!("cannot listen for DNS on {}", args.dns.dns_addr))?;
        info!(addr = %sockets.local_addr, ipv6_addr = ?sockets.ipv6_addr, zone = %args.dns.zone, threads, "answering DNS over UDP and TCP");
        if rrl.rate == 0 {
            info!("UDP response rate limiting off");
        } else {
            info!(
                rate = rrl.rate,
                burst = rrl.burst,
                slip = rrl.slip,
                ipv4_prefix = rrl.ipv4_prefix,
                ipv6_prefix = rrl.ipv6_prefix,
                "UDP response rate limiting per source prefix"
            );
        }
        let metrics = DnsMetrics::new(&registry)?;
        futures::future::Either::Left(sockets.serve(
            zone.clone(),
            index.clone(),
            metrics,
            rrl,
            stop.clone(),
        )?)
    } else {
        futures::future::Either::Right(std::future::pending())
    };

    // One writer for the webhook and the API, so their changes to an account batch together.
    let txt = TxtWriter::new(
        client.clone(),
        index.clone(),
        args.webhook.max_txt_values as usize,
    );
    let webhook = if args.roles.contains(&Role::Webhook) {
        let solver = Solver {
            txt: txt.clone(),
            resolver: AccountResolver {
                index: index.clone(),
                zone: args.dns.zone.clone(),
                cluster_resource_namespace: args.webhook.cluster_resource_namespace.clone(),
                cross_namespace: args.webhook.webhook_cross_namespace,
            },
        };
        let server = http_servers.spawn(webhook::serve(
            args.webhook.clone(),
            client.clone(),
            solver,
            shutdown.clone(),
        ));
        futures::future::Either::Left(async move { joined(server.await) })
    } else {
        futures::future::Either::Right(std::future::pending())
    };

    let (shared, watch) = watch::watch(
        accounts.clone(),
        args.account_list,
        index.clone(),
        &registry,
        {
            let health = health.clone();
            move |accounts| {
                if !health.mark_synced() {
                    info!(accounts, "initial account sync complete; ready");
                }
            }
        },
    )?;

    // Its own task, so it keeps feeding the index while the HTTP servers drain: a
    // Present in flight at shutdown still sees its write delivered.
    let mut watch = tokio::spawn(watch);

    let api = if args.roles.contains(&Role::Api) {
        let namespace = args.api.namespace();
        let credentials = CredentialIndex::default();
        tokio::spawn(
            credentials
                .clone()
                .watch(Api::namespaced(client.clone(), &namespace)),
        );
        let store = KubeStore {
            client: client.clone(),
            namespace,
            zone: args.dns.zone.clone(),
            index: index.clone(),
            credentials,
            txt: txt.clone(),
        };
        let metrics = compat::metrics::ApiMetrics::new(&registry)?;
        let server = http_servers.spawn({
            let (args, shutdown) = (args.api.clone(), shutdown.clone());
            async move {
                compat::serve(&args, store, metrics, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
        futures::future::Either::Left(async move { joined(server.await) })
    } else {
        futures::future::Either::Right(std::future::pending())
    };

    // Its own task and its own stop signal: at shutdown it hands the Lease back while
    // the HTTP servers drain.
    let controller_stop = CancellationToken::new();
    let controller = args.roles.contains(&Role::Controller).then(|| {
        Ok::<_, anyhow::Error>(tokio::spawn(controller::run(ControllerConfig {
            client,
            api: accounts,
            accounts: shared,
            zone: args.dns.zone.clone(),
            reserved: zone.reserved_labels(),
            index: index.clone(),
            args: args.controller.clone(),
            identity: args.identity.clone().unwrap_or_else(default_identity),
            metrics: ControllerMetrics::new(&registry)?,
            shutdown: controller_stop.clone(),
        })))
    });
    let mut controller = controller.transpose()?;
    let controller_ended = async {
        match controller.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };

    let result = tokio::select! {
        result = http => Err(match result {
            Ok(()) => anyhow::anyhow!("the metrics server stopped"),
            Err(e) => anyhow::anyhow!("the metrics server panicked: {e}"),
        }),
        () = dns => Err(anyhow::anyhow!("the DNS TCP server stopped")),
        result = controller_ended => Err(match result {
            Ok(()) => anyhow::anyhow!("the controller stopped"),
            Err(e) => anyhow::anyhow!("the controller panicked: {e}"),
        }),
        result = webhook => result.context("the webhook solver failed"),
        result = api => result.context("the acme-dns API failed"),
        result = &mut watch => Err(match result {
            Ok(()) => anyhow::anyhow!("the AcmeDnsAccount watch ended, which it never should"),
            Err(e) => anyhow::anyhow!("the AcmeDnsAccount watch panicked: {e}"),
        }),
        () = async {
            health::shutdown_signal().await;
            if args.shutdown_delay > 0 {
                health.start_draining();
                info!(seconds = args.shutdown_delay, "shutting down: not ready, still answering until the endpoints have dropped this replica");
                tokio::time::sleep(std::time::Duration::from_secs(args.shutdown_delay)).await;
            }
        } => Ok(()),
    };
    stop.store(true, Ordering::Relaxed);
    shutdown.cancel();
    controller_stop.cancel();
    http_servers.close();
    // Each server bounds its own drain; this bounds a server still starting up.
    let drain = Limits::default().drain_timeout + std::time::Duration::from_secs(5);
    if tokio::time::timeout(drain, http_servers.wait())
        .await
        .is_err()
    {
        warn!("HTTP servers still busy after {drain:?}; exiting anyway");
    }
    if let Some(task) = controller.filter(|task| !task.is_finished()) {
        // Bounded: a release that cannot reach the API server leaves the Lease to expire.
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!("the leader election lease was not released in time; it expires instead");
        }
    }
    watch.abort();
    info!("shut down");
    result
}

/// A spawned server's outcome; a panic in it is an error like any other.
fn joined(result: Result<anyhow::Result<()>, JoinError>) -> anyhow::Result<()> {
    result.unwrap_or_else(|e| Err(anyhow::anyhow!("panicked: {e}")))
}

fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kube-acme-dns".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}_{}", &suffix[..8])
}

/// Fails early, with the command that fixes it, when the CRD is missing; otherwise the
/// watch would retry a 404 forever and the process would look healthy but serve nothing.
async fn check_crd_installed(accounts: &Api<watch::WatchedAccount>) -> anyhow::Result<()> {
    match accounts.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => anyhow::bail!(
            "the AcmeDnsAccount CRD is not installed in this cluster: \
             apply it with `kube-acme-dns crd | kubectl apply -f -` (or install the Helm chart)"
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => anyhow::bail!(
            "not allowed to list AcmeDnsAccounts ({}): grant list/watch on \
             acmednsaccounts.acmedns.io to this identity (the Helm chart's RBAC does)",
            status.message
        ),
        Err(err) => Err(err).context("cannot list AcmeDnsAccounts"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        dns: DnsArgs,
    }

    fn rrl(flags: &[&str]) -> anyhow::Result<RrlConfig> {
        let args = std::iter::once("serve").chain(flags.iter().copied());
        Flags::try_parse_from(args).unwrap().dns.rrl_config()
    }

    #[test]
    fn rrl_is_on_by_default_and_configurable() {
        assert_eq!(rrl(&[]).unwrap(), RrlConfig::DEFAULT);
        let config = rrl(&[
            "--rrl-rate=5",
            "--rrl-burst=1",
            "--rrl-slip=0",
            "--rrl-ipv4-prefix=32",
            "--rrl-ipv6-prefix=64",
        ])
        .unwrap();
        assert_eq!(
            config,
            RrlConfig {
                rate: 5,
                burst: 1,
                slip: 0,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
            }
        );
        assert_eq!(rrl(&["--rrl-rate=0"]).unwrap().rate, 0);
    }

    fn zone(flags: &[&str]) -> Result<Zone, crate::dns::ZoneError> {
        let args = std::iter::once("serve").chain(flags.iter().copied());
        Zone::new(&Flags::try_parse_from(args).unwrap().dns.zone_config())
    }

    #[test]
    fn nsid_is_off_by_default_and_checked_at_start() {
        assert_eq!(zone(&[]).unwrap().nsid(), None);
        assert_eq!(zone(&["--nsid="]).unwrap().nsid(), None);
        assert_eq!(
            zone(&["--nsid=kube-acme-dns-7d9f8-x2x4q"]).unwrap().nsid(),
            Some(&b"kube-acme-dns-7d9f8-x2x4q"[..])
        );
        for bad in ["x".repeat(65), "caf\u{e9}".into(), "tab\there".into()] {
            let error = zone(&[&format!("--nsid={bad}")]).unwrap_err().to_string();
            assert!(error.contains("KUBE_ACME_DNS_NSID"), "{error}");
            assert!(error.contains("at most 64 printable ASCII"), "{error}");
        }
    }

    #[test]
    fn rrl_values_out_of_range_say_what_to_set() {
        for (flag, says) in [
            ("--rrl-rate=2000000", "KUBE_ACME_DNS_RRL_RATE"),
            ("--rrl-burst=0", "KUBE_ACME_DNS_RRL_BURST) to 1 to"),
            ("--rrl-slip=11", "--rrl-slip is 11"),
            ("--rrl-ipv4-prefix=33", "from 8 to 32"),
            ("--rrl-ipv4-prefix=0", "KUBE_ACME_DNS_RRL_IPV4_PREFIX"),
            ("--rrl-ipv6-prefix=8", "from 16 to 128"),
        ] {
            let error = rrl(&[flag]).unwrap_err().to_string();
            assert!(error.contains(says), "{flag}: {error}");
        }
    }
}
