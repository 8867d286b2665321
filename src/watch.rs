//! The one AcmeDnsAccount watch of a process. It is the only writer of the
//! [`AccountIndex`] the DNS responder answers from, and it also feeds the store and the
//! change stream the controller reconciles from, so a replica holds one watch on the
//! resource whatever roles it runs.
//!
//! Events arrive in order and re-lists are consistent reads, so the last thing applied
//! is always the newest state: writers never compare resourceVersions. A (re-)list is
//! collected whole and applied with `reset`, so a restarted watch never empties the
//! index in between. Errors are logged and retried with backoff, never
//! fatal: when the API server goes away, the index keeps the last state seen and DNS
//! keeps answering from it.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        utils::Backoff,
        watcher,
    },
};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::{
    api::AcmeDnsAccount,
    index::{self, AccountIndex, AccountKey},
};

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

/// What the controller reads: every account as last seen, and each change as it comes.
#[derive(Clone)]
pub struct SharedAccounts {
    store: Store<AcmeDnsAccount>,
    changes: broadcast::Sender<Arc<AcmeDnsAccount>>,
}

impl SharedAccounts {
    pub fn store(&self) -> Store<AcmeDnsAccount> {
        self.store.clone()
    }

    /// Changes from now on. A subscriber that falls more than a buffer behind gets every
    /// account in the store instead of the changes it missed, so nothing is lost.
    pub fn changes(&self) -> impl Stream<Item = Arc<AcmeDnsAccount>> + Send + 'static {
        let store = self.store.clone();
        let receiver = self.changes.subscribe();
        futures::stream::unfold(receiver, move |mut receiver| {
            let store = store.clone();
            async move {
                match receiver.recv().await {
                    Ok(account) => Some((futures::stream::iter(vec![account]), receiver)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "the controller fell behind the account watch; reconciling every account");
                        Some((futures::stream::iter(store.state()), receiver))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            }
        })
        .flatten()
    }
}

/// Sets up the watch on `accounts`. The returned future runs it and never ends;
/// `on_synced` is called after each complete (re-)list.
pub fn watch(
    accounts: Api<AcmeDnsAccount>,
    index: Arc<AccountIndex>,
    on_synced: impl Fn(usize) + Send + 'static,
) -> (SharedAccounts, impl Future<Output = ()> + Send) {
    let (store, writer) = reflector::store();
    let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
    let shared = SharedAccounts {
        store: store.clone(),
        changes: changes.clone(),
    };
    // A re-list must never be older than an event already applied, or it would take a
    // newer TXT value away again: list from etcd (a consistent read), not from an API
    // server's cache that may lag behind the one the watch used before.
    let config = watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    let events = watcher(accounts, config)
        .backoff(WatchBackoff::new())
        // Nobody reads the field managers or the annotations (where `kubectl apply` keeps
        // a whole copy of the object); dropping them saves most of each object.
        .modify(|account| {
            let meta = account.meta_mut();
            meta.managed_fields = None;
            meta.annotations = None;
        });
    let run = feed(events, writer, store, changes, index, on_synced);
    (shared, run)
}

async fn feed(
    events: impl Stream<Item = watcher::Result<watcher::Event<AcmeDnsAccount>>> + Send,
    mut writer: reflector::store::Writer<AcmeDnsAccount>,
    store: Store<AcmeDnsAccount>,
    changes: broadcast::Sender<Arc<AcmeDnsAccount>>,
    index: Arc<AccountIndex>,
    on_synced: impl Fn(usize) + Send,
) {
    let mut events = std::pin::pin!(events);
    // A (re-)list in progress: applied to the index account by account, so it is never
    // held whole a second time beside the store's own copy.
    let mut relist = None;
    let stored = |account: &AcmeDnsAccount| store.get(&ObjectRef::from_obj(account));
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(%err, "AcmeDnsAccount watch failed; serving the last state seen, retrying");
                continue;
            }
        };
        writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(account) => {
                info!(account = %AccountKey::of(&account), subdomain = ?account.status.as_ref().and_then(|s| s.subdomain.as_ref()), "account applied");
                index.apply(&account);
                if let Some(account) = stored(&account) {
                    let _ = changes.send(account);
                }
            }
            watcher::Event::Delete(account) => {
                info!(account = %AccountKey::of(&account), "account deleted");
                index.delete(&account);
            }
            // A list that failed half-way is started over; what it applied stays, and
            // the next one to finish removes what is gone.
            watcher::Event::Init => relist = Some(index.relist()),
            watcher::Event::InitApply(account) => {
                relist.get_or_insert_with(|| index.relist()).apply(&account);
            }
            watcher::Event::InitDone => {
                let listed = relist.take().map_or(0, |r| r.finish());
                // Whatever changed while the watch was down is in the re-list, and the
                // store holds it now.
                if changes.receiver_count() > 0 {
                    for account in store.state() {
                        let _ = changes.send(account);
                    }
                }
                on_synced(listed);
                index::release_freed_memory();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
