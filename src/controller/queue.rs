//! Runs reconciles: a bounded number at a time, never two of one account at once, each
//! account again when it changes or when its last reconcile asked to be woken.
//!
//! It keeps no copy of the accounts. An account that changes arrives with its newest
//! state and is reconciled from that; one woken by its timer (a delegation recheck, a TXT
//! value expiring) is handled without its state when the reconciler can
//! ([`Reconciler::without_reading`]), and read from the API server first otherwise. So
//! the leader's memory per account is one timer, not an object, and the same holds while
//! it catches up: accounts queued beyond [`OBJECTS_HELD`] keep only their key and are
//! read again when their turn comes.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::pin,
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt, stream::FuturesUnordered};
use tokio_util::time::{DelayQueue, delay_queue};

use crate::{api::AcmeDnsAccount, index::AccountKey};

/// Queued accounts whose object is kept until their turn; beyond this, only the key.
pub const OBJECTS_HELD: usize = 1024;

/// What a reconcile asks for next: to be woken after a while, or nothing (the account is
/// gone).
pub type Requeue = Option<Duration>;

/// What the queue is given to do.
#[derive(Debug)]
pub enum Work {
    /// An account changed, or was listed: reconcile it from this state, its newest.
    Changed(Arc<AcmeDnsAccount>),
    /// Reconcile an account, reading it from the API server first.
    Read(Arc<AccountKey>),
    /// Wake an account after a while (its status needs nothing now), unless it is to
    /// be woken sooner already.
    Wake(Arc<AccountKey>, Duration),
}

/// How the queue reaches the outside: reading an account, and reconciling one.
pub trait Reconciler: Send + Sync + 'static {
    /// The account's current state; `None` when it no longer exists. An error is
    /// retried after `retry`.
    fn fetch(
        &self,
        account: Arc<AccountKey>,
    ) -> impl Future<Output = Result<Option<Arc<AcmeDnsAccount>>, Duration>> + Send;

    /// Reconciles `account` (its key as the caller shares it, and its state).
    fn reconcile(
        &self,
        key: Arc<AccountKey>,
        account: Arc<AcmeDnsAccount>,
    ) -> impl Future<Output = Requeue> + Send;

    /// Handles an account whose state is not held (woken by its timer, or queued with
    /// only its key) without reading it, when that is enough: `Some` with what comes
    /// next, or `None` to have it read ([`Reconciler::fetch`]) and reconciled.
    fn without_reading(
        &self,
        account: Arc<AccountKey>,
    ) -> impl Future<Output = Option<Requeue>> + Send {
        let _ = account;
        async { None }
    }

    /// The shared key of an account seen in an object, so every record of it points to
    /// one allocation.
    fn key(&self, account: &AcmeDnsAccount) -> Arc<AccountKey> {
        Arc::new(AccountKey::of(account))
    }
}

#[derive(Default)]
pub(super) struct Queue {
    /// Accounts ready to start, in the order they came; each is in `waiting` too.
    ready: VecDeque<Arc<AccountKey>>,
    /// Accounts to reconcile (queued, or to run again once their current run ends), with
    /// their newest state when it is held.
    waiting: HashMap<Arc<AccountKey>, Option<Arc<AcmeDnsAccount>>>,
    running: HashSet<Arc<AccountKey>>,
    timers: DelayQueue<Arc<AccountKey>>,
    timer_of: HashMap<Arc<AccountKey>, delay_queue::Key>,
}

impl Queue {
    /// Asks for `key` to be reconciled, from `account` if given (its newest state).
    fn push(&mut self, key: Arc<AccountKey>, account: Option<Arc<AcmeDnsAccount>>) {
        let hold = self.waiting.len() < OBJECTS_HELD;
        match self.waiting.get_mut(&key) {
            Some(held) => {
                if account.is_some() {
                    *held = account.filter(|_| hold || held.is_some());
                }
            }
            None => {
                if !self.running.contains(&key) {
                    self.ready.push_back(key.clone());
                }
                self.waiting.insert(key, account.filter(|_| hold));
            }
        }
    }

    /// The next account to start, if one is ready.
    fn next(&mut self) -> Option<(Arc<AccountKey>, Option<Arc<AcmeDnsAccount>>)> {
        let key = self.ready.pop_front()?;
        let account = self.waiting.remove(&key).flatten();
        self.running.insert(key.clone());
        Some((key, account))
    }

    /// Wakes `key` after `after`, unless it is to be woken sooner already: an earlier
    /// wake-up may come from a newer state than the one this one was planned from (an
    /// account read by a list that lagged behind its watch event).
    fn wake_after(&mut self, key: Arc<AccountKey>, after: Duration) {
        match self.timer_of.get(&key) {
            Some(timer) => {
                if self.timers.deadline(timer) > tokio::time::Instant::now() + after {
                    self.timers.reset(timer, after);
                }
            }
            None => {
                let timer = self.timers.insert(key.clone(), after);
                self.timer_of.insert(key, timer);
            }
        }
    }

    /// Records the end of `key`'s run and when it wants to be woken.
    pub(super) fn finished(&mut self, key: Arc<AccountKey>, requeue: Requeue) {
        self.running.remove(&key);
        match requeue {
            Some(after) => self.wake_after(key.clone(), after),
            None => {
                if let Some(timer) = self.timer_of.remove(&key) {
                    self.timers.remove(&timer);
                }
            }
        }
        // Changed while it ran: again, from the newer state.
        if self.waiting.contains_key(&key) {
            self.ready.push_back(key);
        }
    }

    fn woken(&mut self, key: Arc<AccountKey>) {
        self.timer_of.remove(&key);
        self.push(key, None);
    }
}

/// Does the work `work` yields, with at most `concurrency` reconciles at once, and wakes
/// each account when its reconcile asked. Once `work` ends it finishes what is queued
/// and returns, timers dropped; dropping it stops every reconcile in flight.
pub async fn run<R: Reconciler>(
    work: impl Stream<Item = Work> + Send,
    reconciler: Arc<R>,
    concurrency: usize,
) {
    let mut work = pin!(work.fuse());
    let mut queue = Queue::default();
    let mut in_flight = FuturesUnordered::new();
    let mut input_done = false;
    loop {
        while in_flight.len() < concurrency {
            let Some((key, account)) = queue.next() else {
                break;
            };
            let reconciler = reconciler.clone();
            in_flight.push(async move {
                let account = match account {
                    Some(account) => Some(account),
                    None => {
                        if let Some(requeue) = reconciler.without_reading(key.clone()).await {
                            return (key, requeue);
                        }
                        match reconciler.fetch(key.clone()).await {
                            Ok(account) => account,
                            Err(retry) => return (key, Some(retry)),
                        }
                    }
                };
                let requeue = match account {
                    Some(account) => reconciler.reconcile(key.clone(), account).await,
                    None => None,
                };
                (key, requeue)
            });
        }
        if input_done && in_flight.is_empty() && queue.ready.is_empty() {
            return;
        }
        // Take more accounts only while few are waiting, so a list of every account is
        // read at the pace reconciles go, not held.
        let room = !input_done && queue.waiting.len() < OBJECTS_HELD;
        tokio::select! {
            Some((key, requeue)) = in_flight.next(), if !in_flight.is_empty() => {
                queue.finished(key, requeue);
            }
            Some(expired) = queue.timers.next(), if !queue.timers.is_empty() => {
                queue.woken(expired.into_inner());
            }
            next = work.next(), if room => match next {
                Some(Work::Changed(account)) => {
                    let key = reconciler.key(&account);
                    queue.push(key, Some(account));
                }
                Some(Work::Read(key)) => queue.push(key, None),
                Some(Work::Wake(key, after)) => queue.wake_after(key, after),
                None => input_done = true,
            },
            // Nothing in flight, no timer and no room: cannot happen while accounts
            // wait, as waiting ones are started first.
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn account(name: &str, version: &str) -> Arc<AcmeDnsAccount> {
        let mut account = AcmeDnsAccount::new(name, Default::default());
        account.metadata.namespace = Some("team".into());
        account.metadata.resource_version = Some(version.into());
        Arc::new(account)
    }

    /// Records what it was asked; each reconcile takes `work` and asks to be woken
    /// after `requeue`. `stored` is what `fetch` finds.
    struct Recorder {
        work: Duration,
        requeue: Requeue,
        stored: Mutex<HashMap<String, Arc<AcmeDnsAccount>>>,
        /// Accounts handled without reading them, and when each asks to be woken.
        unread: Mutex<HashMap<String, Requeue>>,
        log: Mutex<Vec<String>>,
        running: Mutex<HashSet<String>>,
        most_at_once: Mutex<usize>,
    }

    impl Recorder {
        fn new(work: Duration, requeue: Requeue) -> Arc<Self> {
            Arc::new(Self {
                work,
                requeue,
                stored: Mutex::default(),
                unread: Mutex::default(),
                log: Mutex::default(),
                running: Mutex::default(),
                most_at_once: Mutex::default(),
            })
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Reconciler for Recorder {
        async fn fetch(
            &self,
            account: Arc<AccountKey>,
        ) -> Result<Option<Arc<AcmeDnsAccount>>, Duration> {
            self.log
                .lock()
                .unwrap()
                .push(format!("fetch {}", account.name));
            Ok(self.stored.lock().unwrap().get(&*account.name).cloned())
        }

        async fn without_reading(&self, account: Arc<AccountKey>) -> Option<Requeue> {
            let requeue = *self.unread.lock().unwrap().get(&*account.name)?;
            self.log
                .lock()
                .unwrap()
                .push(format!("unread {}", account.name));
            Some(requeue)
        }

        async fn reconcile(&self, key: Arc<AccountKey>, account: Arc<AcmeDnsAccount>) -> Requeue {
            let name = key.name.clone();
            {
                let mut running = self.running.lock().unwrap();
                assert!(
                    running.insert(name.to_string()),
                    "{name} reconciled twice at once"
                );
                let mut most = self.most_at_once.lock().unwrap();
                *most = (*most).max(running.len());
            }
            let version = account.metadata.resource_version.clone().unwrap();
            self.log.lock().unwrap().push(format!("{name}@{version}"));
            tokio::time::sleep(self.work).await;
            self.running.lock().unwrap().remove(&*name);
            self.requeue
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconciles_run_at_most_the_bound_at_once_and_each_account_once() {
        let recorder = Recorder::new(Duration::from_millis(10), None);
        let accounts: Vec<_> = (0..100).map(|i| account(&format!("a{i}"), "1")).collect();
        run(
            futures::stream::iter(accounts.into_iter().map(Work::Changed)),
            recorder.clone(),
            8,
        )
        .await;
        let mut log = recorder.log();
        assert_eq!(log.len(), 100);
        log.sort();
        log.dedup();
        assert_eq!(log.len(), 100, "each account reconciled once");
        assert_eq!(*recorder.most_at_once.lock().unwrap(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_a_reconcile_runs_it_again_from_the_newest_state() {
        let recorder = Recorder::new(Duration::from_millis(100), None);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let runner = tokio::spawn(run(tokio_stream_of(rx), recorder.clone(), 4));
        tx.send(account("a", "1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Two changes while the first reconcile runs: only the newest is reconciled.
        tx.send(account("a", "2")).await.unwrap();
        tx.send(account("a", "3")).await.unwrap();
        tx.send(account("b", "1")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = recorder.log();
        assert_eq!(log, ["a@1", "b@1", "a@3"]);
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_account_is_read_again_and_a_gone_one_forgotten() {
        let recorder = Recorder::new(Duration::from_millis(1), Some(Duration::from_secs(60)));
        recorder
            .stored
            .lock()
            .unwrap()
            .insert("a".into(), account("a", "7"));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let runner = tokio::spawn(run(tokio_stream_of(rx), recorder.clone(), 4));
        tx.send(account("a", "5")).await.unwrap();
        tx.send(account("b", "5")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(recorder.log(), ["a@5", "b@5"]);
        // After the requeue, each is read from the API server: `a` at its newer state,
        // `b` is gone and is not woken again.
        tokio::time::sleep(Duration::from_secs(31)).await;
        let log = recorder.log();
        assert_eq!(log[2..].len(), 3, "{log:?}");
        assert!(log.contains(&"fetch a".to_string()) && log.contains(&"a@7".to_string()));
        assert!(log.contains(&"fetch b".to_string()));
        tokio::time::sleep(Duration::from_secs(121)).await;
        let log = recorder.log();
        assert_eq!(
            log.iter().filter(|l| *l == "fetch b").count(),
            1,
            "a gone account has no timer left: {log:?}"
        );
        assert_eq!(log.iter().filter(|l| *l == "fetch a").count(), 3, "{log:?}");
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_backlog_holds_keys_not_objects() {
        let mut queue = Queue::default();
        for i in 0..(OBJECTS_HELD + 10) {
            let key = Arc::new(AccountKey {
                namespace: "team".into(),
                name: format!("a{i}").into(),
            });
            queue.push(key, Some(account(&format!("a{i}"), "1")));
        }
        let held = queue.waiting.values().filter(|a| a.is_some()).count();
        assert_eq!(held, OBJECTS_HELD);
        assert_eq!(queue.ready.len(), OBJECTS_HELD + 10);
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Arc<AcmeDnsAccount>>,
    ) -> impl Stream<Item = Work> + Send {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Work::Changed)
    }

    fn key(name: &str) -> Arc<AccountKey> {
        Arc::new(AccountKey {
            namespace: "team".into(),
            name: name.into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn planned_accounts_are_read_when_due_and_the_earliest_plan_wins() {
        let recorder = Recorder::new(Duration::from_millis(1), None);
        for name in ["a", "b", "c"] {
            recorder
                .stored
                .lock()
                .unwrap()
                .insert(name.into(), account(name, "2"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let runner = tokio::spawn(run(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            recorder.clone(),
            4,
        ));
        // `a` needs work now; `b` at 60 s, planned again for later (the earlier plan
        // stays); `c` at 120 s, planned again for sooner (the sooner one wins).
        tx.send(Work::Read(key("a"))).await.unwrap();
        tx.send(Work::Wake(key("b"), Duration::from_secs(60)))
            .await
            .unwrap();
        tx.send(Work::Wake(key("b"), Duration::from_secs(600)))
            .await
            .unwrap();
        tx.send(Work::Wake(key("c"), Duration::from_secs(120)))
            .await
            .unwrap();
        tx.send(Work::Wake(key("c"), Duration::from_secs(30)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(recorder.log(), ["fetch a", "a@2"]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(recorder.log()[2..], ["fetch c", "c@2"]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(recorder.log()[4..], ["fetch b", "b@2"]);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            recorder.log().len(),
            6,
            "each woken once: {:?}",
            recorder.log()
        );
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_account_the_reconciler_can_handle_unread_is_not_read() {
        let recorder = Recorder::new(Duration::from_millis(1), None);
        recorder
            .stored
            .lock()
            .unwrap()
            .insert("a".into(), account("a", "2"));
        recorder
            .unread
            .lock()
            .unwrap()
            .insert("a".into(), Some(Duration::from_secs(60)));
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let runner = tokio::spawn(run(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            recorder.clone(),
            4,
        ));
        tx.send(Work::Wake(key("a"), Duration::from_secs(10)))
            .await
            .unwrap();
        // Woken at 10 s, and again at 70 s as it asked, never read.
        tokio::time::sleep(Duration::from_secs(71)).await;
        assert_eq!(recorder.log(), ["unread a", "unread a"]);
        // Once the reconciler cannot, it is read and reconciled.
        recorder.unread.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(recorder.log()[2..], ["fetch a", "a@2"]);
        drop(tx);
        runner.await.unwrap();
    }
}
