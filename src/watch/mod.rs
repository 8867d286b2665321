//! The one AcmeDnsAccount watch of a process. It is the only writer of the
//! [`AccountIndex`] the DNS responder answers from, and it also feeds the change stream
//! the controller reconciles from, so a replica holds one watch on the resource whatever
//! roles it runs. No copy of the objects is kept: the index holds only what is served
//! and looked up, which is what lets a replica hold 100 000 accounts in little memory.
//!
//! Events arrive in order and re-lists are consistent reads, so the last thing applied
//! is always the newest state: writers never compare resourceVersions. A (re-)list is
//! applied account by account and what it did not hold is removed at its end, so a
//! restarted watch never empties the index in between. Errors are logged and retried with backoff, never
//! fatal: when the API server goes away, the index keeps the last state seen and DNS
//! keeps answering from it.

use std::{borrow::Cow, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, utils::Backoff},
};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus},
    index::{self, AccountIndex, AccountKey},
};

mod events;
mod split;

use events::Event;
pub use events::LIST_PAGE;
pub use events::ListBy;

/// Changed accounts queued for a slow controller before it is told to re-read them all.
const CHANGES_BUFFERED: usize = 1024;

/// Waits between attempts at the watch after an error: 0.5 s doubling to at most 5 s,
/// with jitter, and back to 0.5 s after anything succeeds. kube's default backoff grows
/// to 30 s and stays there for two minutes after the API server is back, so after an
/// outage (or an `Expired` watch, which needs a new list at once) new TXT values would be
/// answered up to a minute late; a list every 5 s while the API server is away is cheap.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MOST);
        // Up to a quarter more, so replicas do not all ask at the same instant.
        let jitter = u32::from(uuid::Uuid::new_v4().as_bytes()[0]);
        Some(wait + wait * jitter / 1024)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// An account as the watch decodes it: without `metadata.managedFields` and
/// `metadata.annotations`, which nothing here reads. They are skipped while decoding, not
/// dropped after: the field managers are about half the bytes of a listed account and a
/// tree of small allocations each, and decoding and freeing them was most of a replica's
/// CPU in its first sync of many accounts, time in which it is not ready.
#[derive(Clone, Debug)]
pub struct WatchedAccount(pub AcmeDnsAccount);

impl<'de> Deserialize<'de> for WatchedAccount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The metadata kept; serde skips every other field without building it.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Metadata {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            generation: Option<i64>,
            creation_timestamp: Option<Time>,
            deletion_timestamp: Option<Time>,
            labels: Option<std::collections::BTreeMap<String, String>>,
            owner_references: Option<Vec<OwnerReference>>,
            finalizers: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        struct Account {
            metadata: Metadata,
            spec: AcmeDnsAccountSpec,
            #[serde(default)]
            status: Option<AcmeDnsAccountStatus>,
        }
        let Account {
            metadata: m,
            spec,
            status,
        } = Account::deserialize(deserializer)?;
        let mut account = AcmeDnsAccount::new("", spec);
        account.metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            labels: m.labels,
            owner_references: m.owner_references,
            finalizers: m.finalizers,
            ..Default::default()
        };
        account.status = status;
        Ok(WatchedAccount(account))
    }
}

impl Resource for WatchedAccount {
    type DynamicType = ();
    type Scope = <AcmeDnsAccount as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AcmeDnsAccount::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        AcmeDnsAccount::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        AcmeDnsAccount::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        AcmeDnsAccount::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// What the controller is told by the watch. Objects are passed on as they arrive and
/// never kept: the index holds what serving needs, and the controller reads anything
/// else it needs from the API server.
#[derive(Clone, Debug)]
pub enum Change {
    /// An account was added or changed; this is its newest state.
    Applied(Arc<AcmeDnsAccount>),
    /// Accounts may have changed without an event for each: after a (re-)list, or when
    /// the reader fell behind. The reader should look at every account again.
    Resync,
}

/// What the controller reads: whether the first list is complete, and each change as it
/// comes.
#[derive(Clone)]
pub struct SharedAccounts {
    synced: tokio::sync::watch::Receiver<bool>,
    changes: broadcast::Sender<Change>,
}

impl SharedAccounts {
    /// Waits until the first list has been applied to the index.
    pub async fn wait_until_synced(&self) {
        let mut synced = self.synced.clone();
        // The sender lives as long as the watch, which runs until the process ends.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Changes from now on. A subscriber that falls more than a buffer behind is told
    /// to resync instead of getting the changes it missed, so nothing is lost.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        let receiver = self.changes.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(change) => Some((change, receiver)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "the controller fell behind the account watch; reconciling every account"
                    );
                    Some((Change::Resync, receiver))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }
}

/// Sets up the watch on `accounts`. The returned future runs it and never ends;
/// `on_synced` is called after each complete (re-)list.
pub fn watch<F: Fn(usize) + Send + 'static>(
    accounts: Api<WatchedAccount>,
    list_by: ListBy,
    index: Arc<AccountIndex>,
    registry: &Registry,
    on_synced: F,
) -> prometheus::Result<(SharedAccounts, impl Future<Output = ()> + Send + use<F>)> {
    let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let shared = SharedAccounts {
        synced,
        changes: changes.clone(),
    };
    let lists = IntCounterVec::new(
        Opts::new(
            "kube_acme_dns_account_lists_total",
            "Complete (re-)lists of every AcmeDnsAccount, by how they were made: whole (one request), stream (a streaming list) or pages",
        ),
        &["by"],
    )?;
    registry.register(Box::new(lists.clone()))?;
    // Nobody reads the field managers or the annotations (where `kubectl apply` keeps a
    // whole copy of the object): `WatchedAccount` does not decode them.
    let events = events::events(accounts, list_by).backoff(WatchBackoff::new());
    let run = feed(events, changes, index, move |listed, by| {
        lists.with_label_values(&[by.as_str()]).inc();
        synced_tx.send_replace(true);
        on_synced(listed);
    });
    Ok((shared, run))
}

async fn feed(
    events: impl Stream<Item = events::Step> + Send,
    changes: broadcast::Sender<Change>,
    index: Arc<AccountIndex>,
    on_synced: impl Fn(usize, ListBy) + Send,
) {
    let mut events = std::pin::pin!(events);
    // A (re-)list in progress: applied to the index account by account, so it is never
    // held whole.
    let mut relist = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(%err, "AcmeDnsAccount watch interrupted; serving the last state seen, retrying");
                continue;
            }
        };
        match event {
            Event::Apply(WatchedAccount(account)) => {
                debug!(account = %AccountKey::of(&account), subdomain = ?account.status.as_ref().and_then(|s| s.subdomain.as_ref()), "account applied");
                index.apply(&account);
                if changes.receiver_count() > 0 {
                    let _ = changes.send(Change::Applied(Arc::new(account)));
                }
            }
            Event::Delete(WatchedAccount(account)) => {
                info!(account = %AccountKey::of(&account), "account deleted");
                index.delete(&account);
            }
            // A list that failed half-way is started over; what it applied stays, and
            // the next one to finish removes what is gone.
            Event::Init => relist = Some(index.relist()),
            Event::InitApply(WatchedAccount(account)) => {
                relist.get_or_insert_with(|| index.relist()).apply(&account);
            }
            Event::InitDone(by) => {
                let listed = relist.take().map_or(0, |r| r.finish());
                // Whatever changed while the watch was down is in the re-list; the
                // controller reads it again.
                if changes.receiver_count() > 0 {
                    let _ = changes.send(Change::Resync);
                }
                on_synced(listed, by);
                index::release_freed_memory();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_account_keeps_what_is_read_and_skips_the_field_managers() {
        let listed = serde_json::json!({
            "apiVersion": "acmedns.io/v1alpha1",
            "kind": "AcmeDnsAccount",
            "metadata": {
                "name": "web", "namespace": "team", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"app": "web"}, "finalizers": ["example.test/keep"],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:domains": {}}}}]
            },
            "spec": {"domains": ["example.test"]},
            "status": {"subdomain": "abc", "observedGeneration": 3}
        });
        let WatchedAccount(account) = serde_json::from_value(listed.clone()).unwrap();
        let mut full: AcmeDnsAccount = serde_json::from_value(listed).unwrap();
        full.metadata.managed_fields = None;
        full.metadata.annotations = None;
        assert_eq!(account.metadata, full.metadata);
        assert_eq!(account.spec, full.spec);
        assert_eq!(account.status, full.status);
        assert_eq!(account.metadata.generation, Some(3));
        assert_eq!(
            account.status.and_then(|s| s.subdomain).map(|s| s.0),
            Some("abc".to_string())
        );
    }

    #[test]
    fn the_watch_retries_within_seconds_and_starts_over_after_a_success() {
        let mut backoff = WatchBackoff::new();
        let waits: Vec<Duration> = (&mut backoff).take(10).collect();
        assert!(waits[0] >= WatchBackoff::FIRST && waits[0] < Duration::from_millis(700));
        assert!(
            waits.windows(2).all(|w| w[1] + w[1] / 4 >= w[0]),
            "{waits:?}"
        );
        assert!(
            waits
                .iter()
                .all(|w| *w <= WatchBackoff::MOST + WatchBackoff::MOST / 4),
            "never more than about 5 s: {waits:?}"
        );
        backoff.reset();
        assert!(backoff.next().unwrap() < Duration::from_millis(700));
    }
}
