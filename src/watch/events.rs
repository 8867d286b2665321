//! The events of the account watch: a (re-)list, account by account, then every change.
//!
//! A list is one request without a limit, decoded item by item as its body arrives, then
//! a watch from its resourceVersion. Both are consistent reads that kube-apiserver serves
//! from its watch cache (since Kubernetes 1.31), so a re-list is never older than an
//! event already applied, even when it goes to another API server whose cache lags.
//!
//! Why not pages: a continued page is read at the first page's exact resourceVersion,
//! which the watch cache can only serve while it holds a snapshot at that version. It
//! drops those at each etcd compaction (every 5 minutes), so on an API server where no
//! account was written for a while, every page after the first is read from etcd and
//! decoded again: a replica with 100 000 accounts took 75 s instead of 15 s to be ready.
//!
//! Why not a streaming list (a watch that starts with every account) first: the API
//! server spends about a third more CPU sending accounts as watch events than as one
//! list, and that is most of a first sync. It is the second choice, taken when a whole
//! list is cut off, which is what a list longer than the API server's request timeout
//! (60 s by default) ends in: a watch has no such limit. An API server without streaming
//! lists (the `WatchList` feature off, or older than Kubernetes 1.27) refuses one; then
//! lists come page by page.

use std::{collections::VecDeque, pin::Pin, time::Duration};

use futures::{AsyncBufRead, AsyncBufReadExt, Stream, StreamExt, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::{
    Api,
    api::{ListParams, WatchEvent, WatchParams},
    core::Status,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    WatchedAccount,
    split::{ListSplitter, Piece},
};

/// Accounts per page of a paged (re-)list.
pub const LIST_PAGE: u32 = 500;

/// How long the API server keeps a watch open before the client starts a new one from the
/// last version seen. Changes arrive as they happen either way; bookmarks keep that version
/// recent, so a new watch rarely needs a re-list.
const WATCH_SECONDS: u32 = 290;

/// The same for a streaming list, which must send every account before it ends: long
/// enough for a slow API server to send millions.
const STREAM_LIST_SECONDS: u32 = 1800;

/// A watch that sends nothing, not even a bookmark, for this long after its timeout is
/// taken for a connection lost without notice, and started again.
const IDLE_MARGIN: Duration = Duration::from_secs(30);

/// The annotation on the bookmark that ends a streaming list's accounts.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Why the watch stopped for a moment. Each is logged and retried with backoff; none
/// loses what the index holds.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("could not list AcmeDnsAccounts: {0}")]
    List(#[source] kube::Error),
    #[error("could not watch AcmeDnsAccounts: {0}")]
    Watch(#[source] kube::Error),
    #[error("the API server ended the watch: {0}")]
    Status(#[source] Box<Status>),
    #[error(
        "the API server no longer holds the changes since resourceVersion {0} (they were compacted); listing every account again"
    )]
    Expired(String),
    #[error("the API server ended a streaming list before sending every account; listing again")]
    StreamCut,
    #[error("the API server sent a list without a resourceVersion; listing again")]
    NoResourceVersion,
    #[error("the list of every AcmeDnsAccount was cut off; listing again")]
    ListCut,
    #[error("the API server sent a list that is not JSON ({0}); listing again")]
    Malformed(#[source] super::split::Unbalanced),
    #[error("an AcmeDnsAccount could not be decoded, and is not served: {0}")]
    Undecodable(#[source] serde_json::Error),
}

/// How a (re-)list is made.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListBy {
    /// One list request without a limit, decoded item by item as it arrives.
    Whole,
    /// A streaming list.
    Stream,
    /// A list page by page.
    Pages,
}

impl ListBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Whole => "whole",
            Self::Stream => "stream",
            Self::Pages => "pages",
        }
    }
}

/// A whole list that sends nothing for this long is taken for lost, and started again.
const LIST_IDLE: Duration = Duration::from_secs(90);

type Events = BoxStream<'static, kube::Result<WatchEvent<WatchedAccount>>>;

enum Phase {
    /// Nothing to watch from: (re-)list.
    List,
    /// A whole list arriving.
    Whole(Box<WholeList>),
    /// A streaming list: every account, then the bookmark that ends them.
    Streaming(Events),
    /// A list page by page. `version` is the first page's, once it came.
    Paging {
        page: VecDeque<WatchedAccount>,
        continue_token: Option<String>,
        version: Option<String>,
    },
    /// Everything up to `version` is applied; watch from there.
    Resume(String),
    Watching {
        version: String,
        events: Events,
    },
}

/// A whole list as it arrives: what has been decoded of it, and its version once read.
struct WholeList {
    body: Pin<Box<dyn AsyncBufRead + Send>>,
    splitter: ListSplitter,
    decoded: VecDeque<WatchedAccount>,
    version: Option<String>,
    started: Instant,
    listed: usize,
}

/// What the watch reports, in order.
#[derive(Debug)]
pub enum Event {
    /// A (re-)list begins.
    Init,
    /// An account of the list.
    InitApply(WatchedAccount),
    /// The list is complete; it was made this way.
    InitDone(ListBy),
    /// An account was added or changed after the list.
    Apply(WatchedAccount),
    /// An account was deleted after the list.
    Delete(WatchedAccount),
}

pub type Step = Result<Event, WatchError>;

struct Watch {
    api: Api<WatchedAccount>,
    by: ListBy,
    phase: Phase,
}

/// Every account and then every change, for as long as it is polled. Errors are items:
/// the stream goes on after each, from where it was when it can, with a new list when
/// it cannot.
pub fn events(api: Api<WatchedAccount>, by: ListBy) -> impl Stream<Item = Step> + Send {
    let watch = Watch {
        api,
        by,
        phase: Phase::List,
    };
    futures::stream::unfold(watch, |mut watch| async move {
        let step = watch.step().await;
        Some((step, watch))
    })
}

impl Watch {
    async fn step(&mut self) -> Step {
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::List);
            match phase {
                Phase::List => match self.by {
                    ListBy::Whole => {
                        let request = kube::core::Request::new(self.api.resource_url())
                            .list(&ListParams::default())
                            .map_err(|err| WatchError::List(kube::Error::BuildRequest(err)))?;
                        let client = self.api.clone().into_client();
                        let body = client
                            .request_stream(request)
                            .await
                            .map_err(WatchError::List)?;
                        self.phase = Phase::Whole(Box::new(WholeList {
                            body: Box::pin(body),
                            splitter: ListSplitter::default(),
                            decoded: VecDeque::new(),
                            version: None,
                            started: Instant::now(),
                            listed: 0,
                        }));
                        return Ok(Event::Init);
                    }
                    ListBy::Stream => {
                        let params = WatchParams::default()
                            .initial_events()
                            .timeout(STREAM_LIST_SECONDS);
                        // An empty resourceVersion is an unset one: a consistent read.
                        match self.api.watch(&params, "").await {
                            Ok(events) => {
                                self.phase = Phase::Streaming(events.boxed());
                                return Ok(Event::Init);
                            }
                            Err(kube::Error::Api(status)) if cannot_stream(&status) => {
                                warn!(
                                    reason = %status,
                                    "this API server cannot stream lists (the WatchList feature, on by default since Kubernetes 1.32); listing AcmeDnsAccounts page by page from now on"
                                );
                                self.by = ListBy::Pages;
                            }
                            Err(err) => return Err(WatchError::Watch(err)),
                        }
                    }
                    ListBy::Pages => {
                        self.phase = Phase::Paging {
                            page: VecDeque::new(),
                            continue_token: None,
                            version: None,
                        };
                        return Ok(Event::Init);
                    }
                },
                Phase::Streaming(mut events) => {
                    match next(&mut events, STREAM_LIST_SECONDS).await {
                        Some(Ok(WatchEvent::Added(account) | WatchEvent::Modified(account))) => {
                            self.phase = Phase::Streaming(events);
                            return Ok(Event::InitApply(account));
                        }
                        Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                            let version = bookmark.metadata.resource_version;
                            if bookmark
                                .metadata
                                .annotations
                                .contains_key(INITIAL_EVENTS_END)
                            {
                                if version.is_empty() {
                                    return Err(WatchError::NoResourceVersion);
                                }
                                self.phase = Phase::Watching { version, events };
                                return Ok(Event::InitDone(ListBy::Stream));
                            }
                            self.phase = Phase::Streaming(events);
                        }
                        // The API server sends none before the list's end.
                        Some(Ok(WatchEvent::Deleted(_))) => self.phase = Phase::Streaming(events),
                        // Whatever it was, the list has to start over: what it applied
                        // stays, and the next list to finish removes what is gone.
                        Some(Ok(WatchEvent::Error(status))) => {
                            return Err(WatchError::Status(status));
                        }
                        // One account that cannot be decoded is skipped, not the list; the
                        // stream ends after a lost connection.
                        Some(Err(err)) => {
                            self.phase = Phase::Streaming(events);
                            return Err(WatchError::Watch(err));
                        }
                        None => return Err(WatchError::StreamCut),
                    }
                }
                Phase::Whole(mut list) => {
                    if let Some(account) = list.decoded.pop_front() {
                        list.listed += 1;
                        self.phase = Phase::Whole(list);
                        return Ok(Event::InitApply(account));
                    }
                    if list.splitter.is_complete() {
                        let version = list.version.ok_or(WatchError::NoResourceVersion)?;
                        self.phase = Phase::Resume(version);
                        return Ok(Event::InitDone(ListBy::Whole));
                    }
                    let WholeList {
                        body,
                        splitter,
                        decoded,
                        version,
                        ..
                    } = &mut *list;
                    let why = match tokio::time::timeout(LIST_IDLE, body.as_mut().fill_buf()).await
                    {
                        Ok(Ok([])) => "it ended early".to_string(),
                        Ok(Ok(chunk)) => {
                            let read = chunk.len();
                            let mut bad = None;
                            splitter
                                .feed(chunk, |piece| match piece {
                                    Piece::Item(item) => {
                                        match serde_json::from_slice::<WatchedAccount>(item) {
                                            Ok(account) => decoded.push_back(account),
                                            Err(err) => bad = Some(err),
                                        }
                                    }
                                    Piece::Metadata(meta) => {
                                        *version = serde_json::from_slice::<ListMeta>(meta)
                                            .ok()
                                            .and_then(|m| m.resource_version)
                                            .filter(|v| !v.is_empty());
                                    }
                                })
                                .map_err(WatchError::Malformed)?;
                            body.as_mut().consume(read);
                            self.phase = Phase::Whole(list);
                            // The others are applied; the account that cannot be decoded
                            // is left out of this list, and the list goes on.
                            if let Some(err) = bad {
                                return Err(WatchError::Undecodable(err));
                            }
                            continue;
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => format!("nothing came for {} s", LIST_IDLE.as_secs()),
                    };
                    // Perhaps more accounts than the API server sends within its request
                    // timeout (60 s by default): a streaming list has none.
                    warn!(
                        listed = list.listed,
                        seconds = list.started.elapsed().as_secs(),
                        why,
                        "the list of every AcmeDnsAccount was cut off; listing with a streaming list from now on, which the API server does not time out"
                    );
                    self.by = ListBy::Stream;
                    return Err(WatchError::ListCut);
                }
                Phase::Paging {
                    mut page,
                    continue_token,
                    version,
                } => {
                    if let Some(account) = page.pop_front() {
                        self.phase = Phase::Paging {
                            page,
                            continue_token,
                            version,
                        };
                        return Ok(Event::InitApply(account));
                    }
                    if let (None, Some(version)) = (&continue_token, &version) {
                        self.phase = Phase::Resume(version.clone());
                        return Ok(Event::InitDone(ListBy::Pages));
                    }
                    // Without a resourceVersion, the first page is a consistent read;
                    // the continue token carries its version to the next ones.
                    let params = ListParams {
                        limit: Some(LIST_PAGE),
                        continue_token: continue_token.clone(),
                        ..ListParams::default()
                    };
                    // Any failure, an expired continue token among them, starts the
                    // list over.
                    let list = self.api.list(&params).await.map_err(WatchError::List)?;
                    let version =
                        version.or(list.metadata.resource_version.filter(|v| !v.is_empty()));
                    let continue_token = list.metadata.continue_.filter(|c| !c.is_empty());
                    if version.is_none() {
                        return Err(WatchError::NoResourceVersion);
                    }
                    self.phase = Phase::Paging {
                        page: list.items.into(),
                        continue_token,
                        version,
                    };
                }
                Phase::Resume(version) => {
                    let params = WatchParams::default().timeout(WATCH_SECONDS);
                    match self.api.watch(&params, &version).await {
                        Ok(events) => {
                            self.phase = Phase::Watching {
                                version,
                                events: events.boxed(),
                            };
                        }
                        Err(kube::Error::Api(status)) if status.code == 410 => {
                            return Err(WatchError::Expired(version));
                        }
                        Err(err) => {
                            self.phase = Phase::Resume(version);
                            return Err(WatchError::Watch(err));
                        }
                    }
                }
                Phase::Watching {
                    mut version,
                    mut events,
                } => match next(&mut events, WATCH_SECONDS).await {
                    Some(Ok(WatchEvent::Added(account) | WatchEvent::Modified(account))) => {
                        advance(&mut version, &account);
                        self.phase = Phase::Watching { version, events };
                        return Ok(Event::Apply(account));
                    }
                    Some(Ok(WatchEvent::Deleted(account))) => {
                        advance(&mut version, &account);
                        self.phase = Phase::Watching { version, events };
                        return Ok(Event::Delete(account));
                    }
                    Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                        if !bookmark.metadata.resource_version.is_empty() {
                            version = bookmark.metadata.resource_version;
                        }
                        self.phase = Phase::Watching { version, events };
                    }
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        return Err(WatchError::Expired(version));
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        self.phase = Phase::Resume(version);
                        return Err(WatchError::Status(status));
                    }
                    Some(Err(err)) => {
                        self.phase = Phase::Watching { version, events };
                        return Err(WatchError::Watch(err));
                    }
                    None => {
                        debug!(%version, "the account watch ended; watching again from where it was");
                        self.phase = Phase::Resume(version);
                    }
                },
            }
        }
    }
}

/// Whether the API server refused a streaming list as such (400 or 422), not for a
/// passing reason: it will refuse every one.
fn cannot_stream(status: &Status) -> bool {
    matches!(status.code, 400 | 422)
}

/// The watch's version after `account`'s event.
fn advance(version: &mut String, account: &WatchedAccount) {
    match account.0.metadata.resource_version.as_deref() {
        Some(v) if !v.is_empty() => v.clone_into(version),
        _ => warn!("an account event without a resourceVersion; keeping the last one"),
    }
}

/// The next event, or None when the watch ended or has been silent for longer than its
/// timeout allows.
async fn next(
    events: &mut Events,
    timeout_seconds: u32,
) -> Option<kube::Result<WatchEvent<WatchedAccount>>> {
    let idle = Duration::from_secs(u64::from(timeout_seconds)) + IDLE_MARGIN;
    match tokio::time::timeout(idle, events.next()).await {
        Ok(event) => event,
        Err(_) => {
            debug!(
                seconds = idle.as_secs(),
                "the account watch was silent; starting it again"
            );
            None
        }
    }
}
