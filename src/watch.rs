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

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, utils::Backoff, watcher},
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
pub fn watch(
    accounts: Api<AcmeDnsAccount>,
    index: Arc<AccountIndex>,
    on_synced: impl Fn(usize) + Send + 'static,
) -> (SharedAccounts, impl Future<Output = ()> + Send) {
    let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let shared = SharedAccounts {
        synced,
        changes: changes.clone(),
    };
    // A re-list must never be older than an event already applied, or it would take a
    // newer TXT value away again: list from etcd (a consistent read), not from an API
    // server's cache that may lag behind the one the watch used before. Lists come in
    // pages, so a large one is never held whole.
    let config = watcher::Config::default()
        .list_semantic(watcher::ListSemantic::MostRecent)
        .page_size(LIST_PAGE);
    let events = watcher(accounts, config)
        .backoff(WatchBackoff::new())
        // Nobody reads the field managers or the annotations (where `kubectl apply` keeps
        // a whole copy of the object); dropping them saves most of each object.
        .modify(|account| {
            let meta = account.meta_mut();
            meta.managed_fields = None;
            meta.annotations = None;
        });
    let run = feed(events, changes, index, move |listed| {
        synced_tx.send_replace(true);
        on_synced(listed);
    });
    (shared, run)
}

/// Accounts per page of a (re-)list.
pub const LIST_PAGE: u32 = 500;

async fn feed(
    events: impl Stream<Item = watcher::Result<watcher::Event<AcmeDnsAccount>>> + Send,
    changes: broadcast::Sender<Change>,
    index: Arc<AccountIndex>,
    on_synced: impl Fn(usize) + Send,
) {
    let mut events = std::pin::pin!(events);
    // A (re-)list in progress: applied to the index account by account, so it is never
    // held whole.
    let mut relist = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(%err, "AcmeDnsAccount watch failed; serving the last state seen, retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Apply(account) => {
                info!(account = %AccountKey::of(&account), subdomain = ?account.status.as_ref().and_then(|s| s.subdomain.as_ref()), "account applied");
                index.apply(&account);
                if changes.receiver_count() > 0 {
                    let _ = changes.send(Change::Applied(Arc::new(account)));
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
                // Whatever changed while the watch was down is in the re-list; the
                // controller reads it again.
                if changes.receiver_count() > 0 {
                    let _ = changes.send(Change::Resync);
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
