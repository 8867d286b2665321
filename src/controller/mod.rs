//! The account controller: assigns each account its subdomain, writes the status the
//! user reads (FQDN, CNAMEs to publish, conditions), drops stale TXT values, checks the
//! CNAME delegation, and records Events. One replica runs it at a time, chosen through
//! a Lease; every replica answers DNS regardless.
//!
//! Reconcile is a pipeline: decide the subdomain against the index (`subdomain`) →
//! check delegation when due (`schedule`, then the network in `delegation`) → compute
//! the status and the Events it deserves (pure, in `status`) → write the status if it
//! changed → record the Events.
//!
//! The controller reads the process's one account watch (`crate::watch`): its stream of
//! changes while this replica leads. It keeps no copy of the accounts. A pass over every
//! account (when it takes the Lease, and whenever the watch re-lists) plans the accounts
//! whose status is settled from what the index keeps of them (`status::settled`) and
//! reads only the others from the API server. An account woken by its timer is read
//! again (`queue`) unless the index vouches for its status: then its delegation, when
//! due, is checked with what the index keeps, and the account is read only when the
//! outcome differs from what its status says.

pub mod delegation;
pub mod lease;
pub mod queue;
pub mod schedule;
pub mod status;
pub mod subdomain;

#[cfg(test)]
mod memory_probe;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::events::v1::Event as K8sEvent,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{GetParams, ListParams, PostParams},
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    delegation::Finding,
    queue::Work,
    schedule::{DelegationSchedule, Subject},
    status::{DELEGATED, DelegationState, Facts, Notice, Subdomain},
};
use crate::{
    api::AcmeDnsAccount,
    index::{AccountIndex, AccountKey, ReservedLabels, Settled},
    watch::{Change, LIST_PAGE, SharedAccounts, WatchedAccount},
};

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Resolver (address:port) used to check that `_acme-challenge.<domain>` CNAMEs
    /// point here. Defaults to the first nameserver in /etc/resolv.conf.
    #[arg(long, env = "KUBE_ACME_DNS_DELEGATION_RESOLVER")]
    pub delegation_resolver: Option<SocketAddr>,

    /// TXT values older than this many seconds are dropped. ACME validations finish in
    /// minutes; an hour leaves room for slow CAs and clock skew.
    #[arg(long, env = "KUBE_ACME_DNS_TXT_MAX_AGE", default_value_t = 3600)]
    pub txt_max_age: u64,

    /// Namespace of the leader election Lease. Defaults to the pod's namespace.
    #[arg(long, env = "KUBE_ACME_DNS_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_LEADER_ELECTION_LEASE",
        default_value = "kube-acme-dns-controller"
    )]
    pub leader_election_lease: String,

    /// Seconds a leader's lease lasts without renewal before another replica takes over.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_LEADER_ELECTION_DURATION",
        default_value_t = 15
    )]
    pub leader_election_duration: u64,
}

impl ControllerArgs {
    /// The resolver to use for delegation checks: the flag, else /etc/resolv.conf.
    pub fn resolver(&self) -> Option<SocketAddr> {
        self.delegation_resolver.or_else(|| {
            let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
            conf.lines().find_map(|line| {
                let ip = line.strip_prefix("nameserver")?.trim().parse().ok()?;
                Some(SocketAddr::new(ip, 53))
            })
        })
    }

    pub fn lease_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .unwrap_or_else(crate::pod_namespace)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the status of {account} changed while it was reconciled; reconciling the newer one")]
    Conflict { account: AccountKey },
    #[error(
        "not allowed to write the status of {account} ({message}): grant update on acmednsaccounts/status to this identity (the Helm chart's RBAC does)"
    )]
    Forbidden {
        account: AccountKey,
        message: String,
    },
    #[error("{account} was deleted while it was reconciled")]
    Gone { account: AccountKey },
    #[error(
        "the API server rejected the status of {account}: {message}; the installed CRD is probably older than this kube-acme-dns: apply the matching one (`kube-acme-dns crd | kubectl apply -f -`, or upgrade the Helm chart)"
    )]
    Rejected {
        account: AccountKey,
        message: String,
    },
    #[error("cannot write the status of {account}: {source}")]
    Api {
        account: AccountKey,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn writing_status(account: &AccountKey, source: kube::Error) -> Self {
        let account = account.clone();
        match source {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict { account },
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden {
                account,
                message: s.message,
            },
            kube::Error::Api(s) if s.code == 404 => Error::Gone { account },
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => Error::Rejected {
                account,
                message: s.message,
            },
            source => Error::Api { account, source },
        }
    }

    /// The `cause` label of `kube_acme_dns_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::Forbidden { .. } => "forbidden",
            Error::Gone { .. } => "gone",
            Error::Rejected { .. } => "rejected",
            Error::Api { .. } => "api",
        }
    }

    /// When to try again: a conflict or a deletion brings a newer object anyway.
    fn retry_after(&self) -> Duration {
        match self {
            Error::Conflict { .. } | Error::Gone { .. } => Duration::from_millis(200),
            Error::Forbidden { .. } | Error::Rejected { .. } => Duration::from_secs(30),
            Error::Api { .. } => Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct ControllerMetrics {
    pub leader: IntGauge,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    reads: IntCounter,
    delegation_checks: IntCounter,
}

impl ControllerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let leader = IntGauge::new(
            "kube_acme_dns_controller_leader",
            "1 while this replica holds the controller lease and reconciles accounts",
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_reconciles_total",
                "Account reconciliations, by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kube_acme_dns_reconcile_errors_total",
                "Failed account reconciliations, by cause: conflict (a concurrent write; retried at once), forbidden (RBAC), gone (deleted meanwhile), rejected (the API server refused the status), api (the API server could not be reached or failed)",
            ),
            &["cause"],
        )?;
        let reads = IntCounter::new(
            "kube_acme_dns_controller_reads_total",
            "Accounts read from the API server to be reconciled: those the index cannot vouch for (woken by a timer, or found by a pass over every account), and those whose delegation check found something new",
        )?;
        let delegation_checks = IntCounter::new(
            "kube_acme_dns_delegation_checks_total",
            "Checks of an account's _acme-challenge CNAMEs, each looking up every domain it lists",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(reads.clone()))?;
        registry.register(Box::new(delegation_checks.clone()))?;
        Ok(Self {
            leader,
            reconciles,
            errors,
            reads,
            delegation_checks,
        })
    }
}

/// The reporting controller named in Events.
const REPORTING_CONTROLLER: &str = "kube-acme-dns";

/// Accounts reconciled at once. Without a bound, the first pass of a new leader over
/// every account starts them all together: as many status writes in flight and, for
/// accounts whose delegation is due, as many sockets.
const CONCURRENT_RECONCILES: usize = 32;

/// Everything the controller needs, from `serve`.
pub struct ControllerConfig {
    pub client: Client,
    /// The accounts watched (all namespaces, or one), for the passes over every account.
    pub api: Api<WatchedAccount>,
    /// The process's account watch.
    pub accounts: SharedAccounts,
    /// The zone accounts are served under.
    pub zone: String,
    /// Labels the zone itself uses.
    pub reserved: ReservedLabels,
    pub index: Arc<AccountIndex>,
    pub args: ControllerArgs,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
    pub metrics: ControllerMetrics,
    /// Cancelled at shutdown: the controller stops and the Lease is handed back.
    pub shutdown: CancellationToken,
}

struct Context {
    client: Client,
    api: Api<WatchedAccount>,
    zone: String,
    reserved: ReservedLabels,
    index: Arc<AccountIndex>,
    /// This replica's name, as the reporting instance of its Events.
    identity: String,
    resolver: Option<SocketAddr>,
    txt_max_age: SignedDuration,
    schedule: Mutex<DelegationSchedule>,
    metrics: ControllerMetrics,
}

/// How a replica that may lead has its index judge each account it applies: whether its
/// status is settled, and what to plan it from (see [`status::settled`]). Given to
/// [`AccountIndex::settling`].
pub fn settled_judge(
    zone: String,
    reserved: ReservedLabels,
    txt_max_age_secs: u64,
) -> impl Fn(&AcmeDnsAccount) -> Option<Settled> + Send + Sync + 'static {
    let txt_max_age = SignedDuration::from_secs(txt_max_age_secs as i64);
    move |account| status::settled(account, &zone, &reserved, txt_max_age, Timestamp::now())
}

/// Runs the controller whenever this replica holds the Lease, until `shutdown`.
pub async fn run(config: ControllerConfig) {
    let ControllerConfig {
        client,
        api,
        accounts,
        zone,
        reserved,
        index,
        args,
        identity,
        metrics,
        shutdown,
    } = config;
    let resolver = args.resolver();
    match resolver {
        Some(r) => info!(resolver = %r, "checking CNAME delegations through this resolver"),
        None => warn!(
            "no resolver for delegation checks: set --delegation-resolver; Delegated stays Unknown"
        ),
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        api,
        zone,
        reserved,
        index,
        identity: identity.clone(),
        resolver,
        txt_max_age: SignedDuration::from_secs(args.txt_max_age as i64),
        schedule: Mutex::new(DelegationSchedule::default()),
        metrics: metrics.clone(),
    });
    let election = lease::LeaderElection::new(
        client,
        &args.lease_namespace(),
        &args.leader_election_lease,
        &identity,
        Duration::from_secs(args.leader_election_duration.max(3)),
    );
    let leader = metrics.leader.clone();
    election
        .run(
            || {
                let (accounts, ctx) = (accounts.clone(), ctx.clone());
                async move {
                    // Subscribe first, then pass over every account once the index is
                    // complete: nothing changed in between is missed. What came before
                    // is in the index the first pass goes over, so it is dropped: the
                    // first sync's Resync would start a second pass right away.
                    let mut changes = Box::pin(accounts.changes());
                    accounts.wait_until_synced().await;
                    while let Some(Some(_)) = changes.next().now_or_never() {}
                    lead(changes, ctx).await;
                }
            },
            move |leading| leader.set(i64::from(leading)),
            shutdown,
        )
        .await;
}

/// What the leader does until it loses the Lease: reconciles each changed account, goes
/// over every account once now and again after each re-list of the watch, and
/// reconciles each account when its timer asks.
async fn lead(changes: impl futures::Stream<Item = Change> + Send, ctx: Arc<Context>) {
    let resync = Arc::new(Notify::new());
    resync.notify_one();
    let (planned, planned_rx) = mpsc::channel(LIST_PAGE as usize);
    let passes = passes(ctx.clone(), resync.clone(), planned);
    let changed = changes.filter_map(move |change| {
        futures::future::ready(match change {
            Change::Applied(account) => Some(Work::Changed(account)),
            Change::Resync => {
                resync.notify_one();
                None
            }
        })
    });
    let mut planned_rx = planned_rx;
    let planned = futures::stream::poll_fn(move |cx| planned_rx.poll_recv(cx));
    let work = futures::stream::select(changed, planned);
    tokio::select! {
        () = queue::run(work, ctx.clone(), CONCURRENT_RECONCILES) => {}
        () = passes => {}
        () = prune_schedule(ctx) => {}
    }
}

/// Each time `resync` is notified, goes over every account. One whose status is settled
/// (see [`status::settled`]) is only planned, from what the index keeps of it: when its
/// TXT values expire and its delegation is due. The others are read from the API server
/// and reconciled. So a new leader over accounts that are all in order asks the API
/// server for nothing, and does not slow a replica listing beside it. When many
/// accounts need work (an import, a zone renamed, a status this version writes
/// differently), they are listed a page at a time rather than read one by one: the
/// queue takes them at the pace it reconciles, so a page is all that is held. A
/// notification during a pass brings one more pass after it.
async fn passes(ctx: Arc<Context>, resync: Arc<Notify>, work: mpsc::Sender<Work>) {
    loop {
        resync.notified().await;
        let started = Instant::now();
        let keys = ctx.index.keys();
        let unsettled = keys
            .iter()
            .filter(|key| ctx.index.settled(key).is_none())
            .take(LIST_PAGE as usize + 1)
            .count();
        if unsettled > LIST_PAGE as usize {
            drop(keys);
            let Some(listed) = list_pass(&ctx.api, &work).await else {
                return;
            };
            info!(
                accounts = listed,
                seconds = started.elapsed().as_secs_f64(),
                "listed every account for reconciling"
            );
            continue;
        }
        let (mut planned, mut read) = (0usize, 0usize);
        for key in keys {
            let next = match ctx.index.settled(&key) {
                Some(settled) => {
                    planned += 1;
                    Work::Wake(key.clone(), plan(&key, &settled, &ctx))
                }
                None => {
                    read += 1;
                    Work::Read(key)
                }
            };
            if work.send(next).await.is_err() {
                return;
            }
        }
        info!(
            planned,
            read,
            seconds = started.elapsed().as_secs_f64(),
            "went over every account: planned those in order, reconciling the others"
        );
    }
}

/// Lists every account into `work`, a page at a time; returns how many, or `None` when
/// the queue is gone.
async fn list_pass(api: &Api<WatchedAccount>, work: &mpsc::Sender<Work>) -> Option<usize> {
    let mut params = ListParams::default().limit(LIST_PAGE);
    let mut accounts = 0usize;
    loop {
        match api.list(&params).await {
            Ok(page) => {
                for WatchedAccount(account) in page.items {
                    accounts += 1;
                    work.send(Work::Changed(Arc::new(account))).await.ok()?;
                }
                match page.metadata.continue_ {
                    Some(next) if !next.is_empty() => params.continue_token = Some(next),
                    _ => return Some(accounts),
                }
            }
            // The continue token expired: the pass was slower than etcd's compaction (5
            // minutes), as a first pass over many accounts writing their status is. The
            // API server offers a token to go on from there with a list no longer a
            // snapshot, which is all a pass needs: changes since arrive through the
            // watch anyway. Without one, start over.
            Err(kube::Error::Api(s)) if s.code == 410 => {
                let resume = s
                    .metadata
                    .as_ref()
                    .and_then(|m| m.continue_.clone())
                    .filter(|c| !c.is_empty());
                if resume.is_none() {
                    warn!(
                        accounts,
                        "the pass over every account took too long for its list to continue; starting it over"
                    );
                }
                params.continue_token = resume;
            }
            Err(error) => {
                warn!(%error, "cannot list accounts for the pass over every account; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// When to wake a settled account, planning its first delegation check if this replica
/// has not checked it yet.
fn plan(key: &Arc<AccountKey>, settled: &Settled, ctx: &Context) -> Duration {
    if let Some(delegated) = settled.delegated {
        let since = Timestamp::from_second(settled.delegated_since).unwrap_or_default();
        adopt_earlier_check(key, settled.subject, delegated, since, ctx);
    }
    let txt_expiry = settled
        .txt_expires
        .and_then(|at| Timestamp::from_second(at.get()).ok());
    next_wake(key, txt_expiry, Timestamp::now(), ctx)
}

/// When to look at an account again: when its oldest TXT value expires or its delegation
/// is due, and at least hourly.
fn next_wake(
    key: &AccountKey,
    txt_expiry: Option<Timestamp>,
    now: Timestamp,
    ctx: &Context,
) -> Duration {
    let mut wake = schedule::RECHECK_MAX;
    if let Some(expiry) = txt_expiry {
        let until = Duration::try_from(expiry.duration_since(now)).unwrap_or_default();
        wake = wake.min(until + Duration::from_secs(1));
    }
    if let Some(next) = ctx
        .schedule
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .next_check(key)
    {
        wake = wake.min(next.saturating_duration_since(Instant::now()));
    }
    wake.max(Duration::from_secs(1))
}

/// Plans the first delegation check of an account this replica has not checked, from
/// the outcome of an earlier one that its status holds (made before this replica led,
/// or before a restart), rather than checking at once.
fn adopt_earlier_check(
    key: &Arc<AccountKey>,
    subject: u64,
    delegated: bool,
    since: Timestamp,
    ctx: &Context,
) {
    let mut schedule = ctx.schedule.lock().unwrap_or_else(|p| p.into_inner());
    if !schedule.knows(key) {
        let held_for = Timestamp::now().duration_since(since).unsigned_abs();
        schedule.adopt(key, subject, delegated, held_for, Instant::now());
    }
}

/// Every few minutes, forgets the delegation checks of deleted accounts (nothing
/// reconciles an account that is gone). Never returns.
async fn prune_schedule(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ctx.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key| ctx.index.key(key).is_some());
    }
}

impl queue::Reconciler for Context {
    async fn fetch(&self, key: Arc<AccountKey>) -> Result<Option<Arc<AcmeDnsAccount>>, Duration> {
        self.metrics.reads.inc();
        let api: Api<WatchedAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        // From the API server's watch cache rather than from etcd: a leader catching up
        // over many accounts reads hundreds a second. A cached object a moment old is
        // safe: its status is written with its resourceVersion, so a newer object makes
        // the write fail with 409 and the account is reconciled again from the newer one.
        match api.get_with(&key.name, &GetParams::any()).await {
            Ok(WatchedAccount(account)) => Ok(Some(Arc::new(account))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(error) => {
                warn!(account = %key, %error, "cannot read the account to reconcile it; retrying in 5 s");
                Err(Duration::from_secs(5))
            }
        }
    }

    async fn reconcile(
        &self,
        key: Arc<AccountKey>,
        account: Arc<AcmeDnsAccount>,
    ) -> queue::Requeue {
        Some(match reconcile(&key, &account, self).await {
            Ok(requeue) => requeue,
            Err(error) => error_policy(&key, &error, self),
        })
    }

    async fn without_reading(&self, key: Arc<AccountKey>) -> Option<queue::Requeue> {
        let requeue = settle_unread(&key, self).await?;
        self.metrics.reconciles.with_label_values(&["ok"]).inc();
        Some(Some(requeue))
    }

    fn key(&self, account: &AcmeDnsAccount) -> Arc<AccountKey> {
        let key = AccountKey::of(account);
        self.index.key(&key).unwrap_or_else(|| Arc::new(key))
    }
}

/// Reconciles an account from what the index keeps of it, without reading it, when its
/// status was settled as the watch last delivered it and nothing of it is due but a
/// delegation check (no TXT value to drop). The check is made with the index's label and
/// domains; when it finds what the status says, there is nothing to write, and the
/// account is not read. Returns when to look at it again, or `None` when it must be read
/// and reconciled: not settled, a TXT value expiring, a check that found something new
/// (the reconcile checks again, and writes what it finds), or domains the index keeps in
/// another form than the spec (case, order or repeats), so the subject differs.
///
/// Without this, a leader over many accounts whose delegation keeps failing would read
/// each of them at every step of the backoff, and hourly at worst: a steady load on the
/// API server for statuses that do not change.
async fn settle_unread(key: &Arc<AccountKey>, ctx: &Context) -> Option<Duration> {
    let (settled, label, domains) = ctx.index.settled_subject(key)?;
    let now = Timestamp::now();
    let txt_expiry = settled
        .txt_expires
        .and_then(|at| Timestamp::from_second(at.get()).ok());
    if txt_expiry.is_some_and(|at| at <= now) {
        return None;
    }
    if settled.delegated.is_none() {
        return domains
            .is_empty()
            .then(|| next_wake(key, txt_expiry, now, ctx));
    }
    let fqdn = format!("{label}.{}.", ctx.zone.trim_end_matches('.'));
    let subject: Subject = (domains, fqdn);
    if schedule::subject_hash(&subject) != settled.subject {
        return None;
    }
    let delegated = settled.delegated == Some(true);
    let since = Timestamp::from_second(settled.delegated_since).unwrap_or_default();
    adopt_earlier_check(key, settled.subject, delegated, since, ctx);
    let due = check_due(key, &subject, ctx);
    if due {
        let (domains, fqdn) = &subject;
        let findings = look_up(ctx, domains, fqdn).await;
        if !status::same_delegation(&settled, &findings, fqdn) {
            return None;
        }
        record_check(key, &subject, delegated, ctx);
    }
    Some(next_wake(key, txt_expiry, Timestamp::now(), ctx))
}

/// Reconciles one account; returns when to look at it again.
async fn reconcile(
    key: &Arc<AccountKey>,
    account: &AcmeDnsAccount,
    ctx: &Context,
) -> Result<Duration, Error> {
    let subdomain = subdomain::decide(account, &ctx.reserved, &ctx.index, subdomain::random_label);
    let delegation = match &subdomain {
        Subdomain::Assigned(label) => check_delegation_if_due(account, key, label, ctx).await,
        _ => DelegationState::Unchanged,
    };
    let now = Timestamp::now();
    let desired = status::desired_status(&Facts {
        account,
        zone: &ctx.zone,
        subdomain: &subdomain,
        delegation: &delegation,
        now,
        txt_max_age: ctx.txt_max_age,
    });

    let current = account.status.clone().unwrap_or_default();
    if account.status.as_ref() != Some(&desired) {
        let mut updated = account.clone();
        updated.status = Some(desired.clone());
        // replace_status carries the resourceVersion read: a concurrent write (the
        // webhook adding a TXT value) makes this fail with 409, and the requeue
        // reconciles from the newer object instead of overwriting it.
        let api: Api<AcmeDnsAccount> = Api::namespaced(ctx.client.clone(), &key.namespace);
        api.replace_status(&key.name, &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::writing_status(key, source))?;
        publish(
            account,
            status::events(&current, &desired, ctx.txt_max_age),
            ctx,
        )
        .await;
    }
    ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
    let txt_expiry = status::next_txt_expiry(&desired, ctx.txt_max_age);
    Ok(next_wake(key, txt_expiry, now, ctx))
}

/// Counts a failed reconcile; returns when to try again.
fn error_policy(account: &AccountKey, error: &Error, ctx: &Context) -> Duration {
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    match error {
        // Someone else wrote first; the newer object is already on its way.
        Error::Conflict { .. } | Error::Gone { .. } => {}
        _ => warn!(%account, %error, "reconcile failed; retrying"),
    }
    error.retry_after()
}

async fn check_delegation_if_due(
    account: &AcmeDnsAccount,
    key: &Arc<AccountKey>,
    label: &str,
    ctx: &Context,
) -> DelegationState {
    let domains: Vec<String> = account.spec.domains.iter().map(|d| d.0.clone()).collect();
    if domains.is_empty() {
        return DelegationState::NoDomains;
    }
    let fqdn = format!("{label}.{}.", ctx.zone.trim_end_matches('.'));
    let subject: Subject = (domains.clone(), fqdn.clone());
    // A status without the condition (new, or written by hand) is checked at once. One
    // with it, for the current spec, holds an earlier check's outcome: when this replica
    // has not checked the account yet (it just took the Lease), the next check is
    // planned from that outcome instead of made now.
    let earlier = account.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DELEGATED && c.reason != "NoDomains")
    });
    if let Some(condition) = earlier
        && condition.observed_generation == account.metadata.generation
    {
        let delegated = condition.status == "True";
        let since = condition.last_transition_time.0;
        adopt_earlier_check(key, schedule::subject_hash(&subject), delegated, since, ctx);
    }
    let due = check_due(key, &subject, ctx);
    if !due && earlier.is_some() {
        return DelegationState::Unchanged;
    }
    let findings = look_up(ctx, &domains, &fqdn).await;
    let delegated = findings.iter().all(|(_, f)| *f == Finding::Delegated);
    record_check(key, &subject, delegated, ctx);
    DelegationState::Checked(findings)
}

/// Whether `subject` of `key` is due for a delegation check now.
fn check_due(key: &AccountKey, subject: &Subject, ctx: &Context) -> bool {
    ctx.schedule
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .due(key, subject, Instant::now())
}

/// Records the outcome of a delegation check of `subject` made now.
fn record_check(key: &Arc<AccountKey>, subject: &Subject, delegated: bool, ctx: &Context) {
    ctx.schedule
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(key, subject, delegated, Instant::now());
}

/// Checks that the `_acme-challenge` name of each of `domains` leads to `fqdn`.
async fn look_up(ctx: &Context, domains: &[String], fqdn: &str) -> Vec<(String, Finding)> {
    ctx.metrics.delegation_checks.inc();
    let Some(resolver) = ctx.resolver else {
        return domains
            .iter()
            .map(|d| {
                let name = delegation::challenge_name(d);
                (
                    d.clone(),
                    Finding::Unresolvable {
                        name,
                        reason: "no resolver configured (--delegation-resolver)".into(),
                    },
                )
            })
            .collect();
    };
    futures::future::join_all(
        domains
            .iter()
            .map(|d| async move { (d.clone(), delegation::check(resolver, d, fqdn).await) }),
    )
    .await
}

/// Records `notices` as Events on the account. A failure is logged, never fatal: the
/// status already says everything the Events do.
///
/// Each Event is created as it is. kube-runtime's `Recorder` keeps every Event it
/// published for six minutes, to turn repeats into a series, and walks that whole cache
/// on each publish: after a first pass over many new accounts (an import, a new leader
/// on a large cluster) that is an Event object held per account and a walk per Event.
/// Ours are written only when the status changes, so there are no repeats to count.
async fn publish(account: &AcmeDnsAccount, notices: Vec<Notice>, ctx: &Context) {
    if notices.is_empty() {
        return;
    }
    let regarding = account.object_ref(&());
    let namespace = account.namespace().unwrap_or_default();
    let events: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    let generate_name = event_name_prefix(&account.name_any());
    for notice in notices {
        let event = K8sEvent {
            metadata: ObjectMeta {
                // The API server adds a random suffix, so Events of one reconcile never
                // collide.
                generate_name: Some(generate_name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            type_: Some(if notice.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(notice.reason.into()),
            note: Some(notice.note),
            action: Some("Reconcile".into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(ctx.identity.clone()),
            ..Default::default()
        };
        if let Err(e) = events.create(&PostParams::default(), &event).await {
            warn!(account = %account.name_any(), error = %e, "cannot record an Event");
        }
    }
}

/// The `generateName` of an account's Events: its name, cut to what the API server keeps
/// of a prefix (it appends five random characters to at most 58) and ending in `-`, the
/// one trailing character a prefix may have.
fn event_name_prefix(account: &str) -> String {
    let mut prefix: String = account.chars().take(57).collect();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    prefix.push('-');
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_valid_prefixes_of_the_account_name() {
        assert_eq!(event_name_prefix("web"), "web-");
        let long = format!("{}.{}", "a".repeat(56), "b".repeat(100));
        assert_eq!(event_name_prefix(&long), format!("{}-", "a".repeat(56)));
        assert_eq!(event_name_prefix(&"c".repeat(253)).len(), 58);
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("refused with {code}"), "Refused")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn status_write_failures_are_told_apart_by_cause() {
        let account = AccountKey {
            namespace: "team".into(),
            name: "a".into(),
        };
        let label = |code| Error::writing_status(&account, api_error(code)).metric_label();
        assert_eq!(label(409), "conflict");
        assert_eq!(label(403), "forbidden");
        assert_eq!(label(404), "gone");
        assert_eq!(label(422), "rejected");
        assert_eq!(label(500), "api");
        let forbidden = Error::writing_status(&account, api_error(403)).to_string();
        assert!(forbidden.contains("acmednsaccounts/status"), "{forbidden}");
        // A conflict is retried at once: the newer object is already on its way.
        assert!(
            Error::writing_status(&account, api_error(409)).retry_after()
                < Error::writing_status(&account, api_error(500)).retry_after()
        );
    }
}
