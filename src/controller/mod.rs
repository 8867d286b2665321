//! The account controller: assigns each account its subdomain, writes the status the
//! user reads (FQDN, CNAMEs to publish, conditions), drops stale TXT values, checks the
//! CNAME delegation, and records Events. One replica runs it at a time, chosen through
//! a Lease; every replica answers DNS regardless.
//!
//! Reconcile is a pipeline: decide the subdomain against the index (needs shared
//! state) → check delegation when due (needs the network) → compute the status (pure,
//! in `status`) → write it if it changed → record Events for what changed.

pub mod delegation;
pub mod lease;
pub mod status;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tracing::{info, warn};

use self::{
    delegation::Finding,
    status::{DELEGATED, DelegationState, Facts, READY, Subdomain},
};
use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountStatus},
    dns::Zone,
    index::{AccountIndex, AccountKey, Label},
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
        self.leader_election_namespace.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .map(|ns| ns.trim().to_string())
                .unwrap_or_else(|_| "default".into())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the status of {account}: {source}")]
    WriteStatus {
        account: AccountKey,
        #[source]
        source: kube::Error,
    },
}

#[derive(Clone)]
pub struct ControllerMetrics {
    pub leader: IntGauge,
    reconciles: IntCounterVec,
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
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        Ok(Self { leader, reconciles })
    }
}

/// When the delegation of one account was last checked, and for what.
struct DelegationMemo {
    checked_for: (Vec<String>, String),
    next_check: Instant,
    failures: u32,
}

pub struct Context {
    client: Client,
    zone: Arc<Zone>,
    zone_name: String,
    index: Arc<AccountIndex>,
    recorder: Recorder,
    resolver: Option<SocketAddr>,
    txt_max_age: SignedDuration,
    memos: Mutex<HashMap<AccountKey, DelegationMemo>>,
    metrics: ControllerMetrics,
}

/// Delegation is rechecked after this while it holds, and with backoff from
/// [`RECHECK_MIN`] up to this while it does not.
const RECHECK_MAX: Duration = Duration::from_secs(3600);
const RECHECK_MIN: Duration = Duration::from_secs(10);

#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    accounts: Api<AcmeDnsAccount>,
    zone: Arc<Zone>,
    zone_name: String,
    index: Arc<AccountIndex>,
    args: ControllerArgs,
    identity: String,
    metrics: ControllerMetrics,
) {
    let resolver = args.resolver();
    match resolver {
        Some(r) => info!(resolver = %r, "checking CNAME delegations through this resolver"),
        None => warn!(
            "no resolver for delegation checks: set --delegation-resolver; Delegated stays Unknown"
        ),
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kube-acme-dns".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        zone,
        zone_name,
        index,
        recorder,
        resolver,
        txt_max_age: SignedDuration::from_secs(args.txt_max_age as i64),
        memos: Mutex::new(HashMap::new()),
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
                Controller::new(accounts.clone(), watcher::Config::default())
                    .run(reconcile, error_policy, ctx.clone())
                    .for_each(|_| futures::future::ready(()))
            },
            move |leading| leader.set(i64::from(leading)),
        )
        .await;
}

async fn reconcile(account: Arc<AcmeDnsAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = AccountKey::of(&account);
    let subdomain = decide_subdomain(&account, &ctx);
    let delegation = match &subdomain {
        Subdomain::Assigned(label) => check_delegation_if_due(&account, &key, label, &ctx).await,
        _ => DelegationState::Unchanged,
    };
    let now = Timestamp::now();
    let desired = status::desired_status(&Facts {
        account: &account,
        zone: &ctx.zone_name,
        subdomain: &subdomain,
        delegation: &delegation,
        now,
        txt_max_age: ctx.txt_max_age,
    });

    let current = account.status.clone().unwrap_or_default();
    if account.status.as_ref() != Some(&desired) {
        let mut updated = (*account).clone();
        updated.status = Some(desired.clone());
        // replace_status carries the resourceVersion read: a concurrent write (the
        // webhook adding a TXT value) makes this fail with 409, and the requeue
        // reconciles from the newer object instead of overwriting it.
        let api: Api<AcmeDnsAccount> = Api::namespaced(ctx.client.clone(), &key.namespace);
        api.replace_status(&key.name, &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::WriteStatus {
                account: key.clone(),
                source,
            })?;
        record_changes(&account, &current, &desired, &ctx).await;
    }
    ctx.metrics.reconciles.with_label_values(&["ok"]).inc();

    let mut requeue = RECHECK_MAX;
    if let Some(expiry) = status::next_txt_expiry(&desired, ctx.txt_max_age) {
        let until = expiry.duration_since(now).unsigned_abs();
        requeue = requeue.min(until + Duration::from_secs(1));
    }
    if let Some(memo) = ctx
        .memos
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        requeue = requeue.min(memo.next_check.saturating_duration_since(Instant::now()));
    }
    Ok(Action::requeue(requeue.max(Duration::from_secs(1))))
}

fn error_policy(account: Arc<AcmeDnsAccount>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    let conflict =
        matches!(error, Error::WriteStatus { source: kube::Error::Api(s), .. } if s.code == 409);
    if conflict {
        // Someone else wrote first; the newer object is already on its way.
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(account = %AccountKey::of(&account), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The label this account should be served under. The label already held is kept; a
/// label another account holds is refused rather than served twice.
fn decide_subdomain(account: &AcmeDnsAccount, ctx: &Context) -> Subdomain {
    let pinned = account.spec.subdomain.as_ref().map(|s| s.0.clone());
    let held = account
        .status
        .as_ref()
        .and_then(|s| s.subdomain.as_ref())
        .map(|s| s.0.clone());
    let wanted = pinned
        .or(held)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let Some(label) = Label::new(wanted.as_bytes()) else {
        // The CRD validates spec.subdomain; this only guards hand-written status.
        return Subdomain::Reserved { label: wanted };
    };
    if ctx.zone.uses_label(label.as_bytes()) {
        return Subdomain::Reserved { label: wanted };
    }
    let me = AccountKey::of(account);
    match ctx.index.claimants(&label).into_iter().next() {
        Some(first) if first != me => Subdomain::Taken {
            label: wanted,
            by: first,
        },
        _ => Subdomain::Assigned(wanted),
    }
}

async fn check_delegation_if_due(
    account: &AcmeDnsAccount,
    key: &AccountKey,
    label: &str,
    ctx: &Context,
) -> DelegationState {
    let domains: Vec<String> = account.spec.domains.iter().map(|d| d.0.clone()).collect();
    if domains.is_empty() {
        return DelegationState::NoDomains;
    }
    let fqdn = format!("{label}.{}.", ctx.zone_name.trim_end_matches('.'));
    let subject = (domains.clone(), fqdn.clone());
    let has_condition = account.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == DELEGATED && c.reason != "NoDomains")
    });
    {
        let memos = ctx.memos.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(memo) = memos.get(key)
            && memo.checked_for == subject
            && memo.next_check > Instant::now()
            && has_condition
        {
            return DelegationState::Unchanged;
        }
    }
    let Some(resolver) = ctx.resolver else {
        return DelegationState::Checked(
            domains
                .into_iter()
                .map(|d| {
                    let name = delegation::challenge_name(&d);
                    (
                        d,
                        Finding::Unresolvable {
                            name,
                            reason: "no resolver configured (--delegation-resolver)".into(),
                        },
                    )
                })
                .collect(),
        );
    };
    let fqdn_ref = fqdn.as_str();
    let findings: Vec<(String, Finding)> = futures::future::join_all(
        domains
            .iter()
            .map(|d| async move { (d.clone(), delegation::check(resolver, d, fqdn_ref).await) }),
    )
    .await;
    let ok = findings.iter().all(|(_, f)| *f == Finding::Delegated);
    let mut memos = ctx.memos.lock().unwrap_or_else(|p| p.into_inner());
    let failures = match memos.get(key) {
        Some(memo) if !ok && memo.checked_for == subject => memo.failures + 1,
        _ if ok => 0,
        _ => 1,
    };
    let wait = if ok {
        RECHECK_MAX
    } else {
        (RECHECK_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(10))).min(RECHECK_MAX)
    };
    memos.insert(
        key.clone(),
        DelegationMemo {
            checked_for: subject,
            next_check: Instant::now() + wait,
            failures,
        },
    );
    DelegationState::Checked(findings)
}

/// Events for what a user would want to hear about: a subdomain assigned or refused,
/// delegation found or lost, TXT values expired.
async fn record_changes(
    account: &AcmeDnsAccount,
    old: &AcmeDnsAccountStatus,
    new: &AcmeDnsAccountStatus,
    ctx: &Context,
) {
    let mut events = Vec::new();
    if new.subdomain.is_some() && old.subdomain != new.subdomain {
        let records: Vec<String> = new
            .cnames
            .iter()
            .map(|c| format!("{} CNAME {}", c.name, c.target))
            .collect();
        events.push((
            EventType::Normal,
            "SubdomainAssigned",
            if records.is_empty() {
                format!("served at {}", new.fqdn.clone().unwrap_or_default())
            } else {
                format!(
                    "served at {}; publish: {}",
                    new.fqdn.clone().unwrap_or_default(),
                    records.join(", ")
                )
            },
        ));
    }
    let condition =
        |s: &AcmeDnsAccountStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned();
    if let Some(ready) = condition(new, READY)
        && ready.status == "False"
        && condition(old, READY).map(|c| (c.status, c.reason))
            != Some((ready.status.clone(), ready.reason.clone()))
    {
        events.push((
            EventType::Warning,
            "SubdomainRefused",
            ready.message.clone(),
        ));
    }
    if let Some(delegated) = condition(new, DELEGATED)
        && condition(old, DELEGATED).map(|c| (c.status, c.message))
            != Some((delegated.status.clone(), delegated.message.clone()))
    {
        match delegated.status.as_str() {
            "True" => events.push((EventType::Normal, "Delegated", delegated.message.clone())),
            "False" => events.push((
                EventType::Warning,
                "NotDelegated",
                delegated.message.clone(),
            )),
            _ => {}
        }
    }
    let expired = old.txt.iter().filter(|t| !new.txt.contains(t)).count();
    if expired > 0 && old.subdomain == new.subdomain {
        events.push((
            EventType::Normal,
            "TxtExpired",
            format!(
                "dropped {expired} TXT value(s) older than {}s",
                ctx.txt_max_age.as_secs()
            ),
        ));
    }
    let reference = account.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(account = %account.name_any(), error = %e, "cannot record an Event");
        }
    }
}
