//! The one AcmeDnsAccount watch of a process. It is the only writer of the
//! [`AccountIndex`] the DNS responder answers from, and it also feeds the store and the
//! change stream the controller reconciles from, so a replica holds one watch on the
//! resource whatever roles it runs.
//!
//! A (re-)list is collected whole and applied with `reset`, so a restarted watch never
//! empties the index in between. Errors are logged and retried with backoff, never
//! fatal: when the API server goes away, the index keeps the last state seen and DNS
//! keeps answering from it.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::{
    api::AcmeDnsAccount,
    index::{AccountIndex, AccountKey},
};

/// Changed accounts queued for a slow controller before it is told to re-read them all.
const CHANGES_BUFFERED: usize = 1024;

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
    let events = watcher(accounts, watcher::Config::default())
        .default_backoff()
        // Nobody reads the field managers; dropping them saves most of each object.
        .modify(|account| account.meta_mut().managed_fields = None);
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
    let mut relist: Vec<AcmeDnsAccount> = Vec::new();
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
            watcher::Event::Init => relist.clear(),
            watcher::Event::InitApply(account) => relist.push(account),
            watcher::Event::InitDone => {
                index.reset(&relist);
                // Whatever changed while the watch was down is in the re-list.
                if changes.receiver_count() > 0 {
                    for account in &relist {
                        if let Some(account) = stored(account) {
                            let _ = changes.send(account);
                        }
                    }
                }
                on_synced(relist.len());
                relist = Vec::new();
            }
        }
    }
}
