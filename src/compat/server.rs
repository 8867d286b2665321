//! The routes of the acme-dns API over an [`AccountStore`]: what to answer is decided
//! here, where accounts live is the store's business. Credentials are checked in
//! acme-dns's order, every failure answered the same way, and bcrypt runs on threads of
//! its own at a lower priority ([`KeyWork`]) under a concurrency cap, so a flood of bad
//! keys neither answers faster for unknown users nor starves the async workers or the
//! DNS threads.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{Extension, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ipnet::IpNet;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{
    keywork::KeyWork,
    limit::{RateLimit, RegisterLimiter},
    metrics::{self, ApiMetrics},
    protocol::{self, ErrorCode, RegisterRequest},
};
use crate::{http::Peer, index::AccountKey};

/// What `/update` checks a caller against.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub account: AccountKey,
    /// The label the account is served under; the update body must name exactly it.
    pub subdomain: String,
    /// bcrypt hash of the API key.
    pub key_hash: String,
    pub allow_from: Vec<IpNet>,
}

/// A new account, as the store made it.
#[derive(Clone, Debug)]
pub struct Registered {
    pub subdomain: String,
    /// `<subdomain>.<zone>`, without a trailing dot, as acme-dns writes it.
    pub fulldomain: String,
}

/// Where accounts and their credentials live.
pub trait AccountStore: Send + Sync + 'static {
    /// The credentials of `username` (canonical UUID), from memory: never a request to
    /// the API server per call.
    fn credentials(&self, username: &str) -> Option<Credentials>;

    /// Creates an account with these credentials.
    fn register(
        &self,
        username: &str,
        key_hash: &str,
        request: &RegisterRequest,
    ) -> impl Future<Output = Result<Registered, String>> + Send;

    /// Adds `txt` to the account's values; returns once this replica answers it.
    fn update(
        &self,
        account: &AccountKey,
        txt: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Deletes the account and its credentials.
    fn deregister(
        &self,
        credentials: &Credentials,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Serve `/register`; without it the route does not exist (404), as in acme-dns.
    pub registration: bool,
    /// When set, `/register` needs this value in [`REGISTRATION_TOKEN_HEADER`].
    pub registration_token: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// bcrypt cost of new keys; acme-dns uses 10.
    pub bcrypt_cost: u32,
    /// bcrypt computations at once; the rest wait their turn.
    pub bcrypt_concurrency: usize,
    /// Registrations per source network; `None` for no limit.
    pub register_limit: Option<RateLimit>,
}

pub const REGISTRATION_TOKEN_HEADER: &str = "X-Registration-Token";

struct Api<S> {
    store: S,
    settings: Settings,
    bcrypt: Semaphore,
    key_work: KeyWork,
    /// Compared against when the user is unknown, so a miss costs what a hit does.
    dummy_hash: String,
    register_limiter: Option<RegisterLimiter>,
}

/// The router of the API over `store`, counting its requests in `metrics`.
pub fn router<S: AccountStore>(
    store: S,
    settings: Settings,
    metrics: ApiMetrics,
) -> std::io::Result<Router> {
    let dummy_hash = bcrypt::hash(protocol::new_key(), settings.bcrypt_cost)
        .expect("bcrypt cost is validated by the flag");
    let concurrency = settings.bcrypt_concurrency.max(1);
    let api = Arc::new(Api {
        store,
        bcrypt: Semaphore::new(concurrency),
        key_work: KeyWork::new(concurrency)?,
        register_limiter: settings.register_limit.map(RegisterLimiter::new),
        settings,
        dummy_hash,
    });
    let mut router = Router::new()
        .route("/update", post(update::<S>))
        .route("/deregister", post(deregister::<S>))
        .route("/health", get(|| async { StatusCode::OK }));
    if api.settings.registration {
        router = router.route("/register", post(register::<S>));
    }
    Ok(router
        .route_layer(middleware::from_fn_with_state(metrics, metrics::observe))
        .fallback(not_found)
        .with_state(api))
}

/// Go's net/http answer for an unknown path, which clients may match on.
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, code: ErrorCode) -> Response {
    json(status, code.body())
}

async fn register<S: AccountStore>(
    State(api): State<Arc<Api<S>>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(limiter) = &api.register_limiter {
        let client = api.client_address(&peer, &headers);
        if let Err(wait) = limiter.take(client, Instant::now()) {
            info!(%client, "registration refused: this source has registered too often");
            let retry_after = wait.as_secs().max(1).to_string();
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited);
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    if let Some(token) = &api.settings.registration_token {
        let given = headers
            .get(REGISTRATION_TOKEN_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !constant_time_eq(given, token.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden);
        }
    }
    let request = match protocol::parse_register(&body) {
        Ok(request) => request,
        Err(code) => return error(StatusCode::BAD_REQUEST, code),
    };
    let username = uuid::Uuid::new_v4().hyphenated().to_string();
    let password = protocol::new_key();
    let Some(key_hash) = api.hash(password.clone()).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::DbError);
    };
    match api.store.register(&username, &key_hash, &request).await {
        Ok(registered) => {
            info!(%username, subdomain = %registered.subdomain, "registered an account");
            json(
                StatusCode::CREATED,
                protocol::register_answer(
                    &username,
                    &password,
                    &registered.fulldomain,
                    &registered.subdomain,
                    &request.allow_from_text,
                ),
            )
        }
        Err(e) => {
            warn!(error = %e, "registration failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::DbError)
        }
    }
}

/// The caller's credentials, checked in acme-dns's order: user, key format, user known,
/// key right, source address. Every failure is the same 401.
async fn authenticate<S: AccountStore>(
    api: &Api<S>,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Credentials, Response> {
    let forbidden = || error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let Some(user) = protocol::canonical_user(header("X-Api-User")) else {
        return Err(forbidden());
    };
    let key = header("X-Api-Key");
    if !protocol::is_valid_key(key) {
        return Err(forbidden());
    }
    let credentials = api.store.credentials(&user);
    let hash = credentials
        .as_ref()
        .map_or(api.dummy_hash.clone(), |c| c.key_hash.clone());
    let key_matches = api.verify(key.to_string(), hash).await;
    let Some(credentials) = credentials.filter(|_| key_matches) else {
        return Err(forbidden());
    };
    let client = api.client_address(peer, headers);
    if !protocol::allowed(client, &credentials.allow_from) {
        info!(account = %credentials.account, %client, "refused: source address not in allowfrom");
        return Err(forbidden());
    }
    Ok(credentials)
}

async fn update<S: AccountStore>(
    State(api): State<Arc<Api<S>>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let credentials = match authenticate(&api, &peer, &headers).await {
        Ok(credentials) => credentials,
        Err(refused) => return refused,
    };
    // A body that is not JSON, or names another subdomain, is refused like bad
    // credentials, as acme-dns does.
    let Some(request) = protocol::parse_update(&body) else {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden);
    };
    if request.subdomain != credentials.subdomain {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden);
    }
    if !protocol::is_valid_txt(&request.txt) {
        return error(StatusCode::BAD_REQUEST, ErrorCode::BadTxt);
    }
    match api.store.update(&credentials.account, &request.txt).await {
        Ok(()) => json(StatusCode::OK, protocol::update_answer(&request.txt)),
        Err(e) => {
            warn!(account = %credentials.account, error = %e, "update failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::DbError)
        }
    }
}

/// `POST /deregister` (acme-dns has none): with the account's own credentials, deletes
/// the account and its credentials. Its subdomain stops answering at once; a CNAME
/// still pointing at it then leads nowhere.
async fn deregister<S: AccountStore>(
    State(api): State<Arc<Api<S>>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let credentials = match authenticate(&api, &peer, &headers).await {
        Ok(credentials) => credentials,
        Err(refused) => return refused,
    };
    match api.store.deregister(&credentials).await {
        Ok(()) => {
            info!(account = %credentials.account, "deregistered an account");
            json(
                StatusCode::OK,
                format!(
                    "{{\"deregistered\": {}}}",
                    serde_json::Value::String(credentials.subdomain.clone())
                ),
            )
        }
        Err(e) => {
            warn!(account = %credentials.account, error = %e, "deregistration failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::DbError)
        }
    }
}

impl<S> Api<S> {
    /// The client: the TCP peer, or the right-most untrusted `X-Forwarded-For` entry
    /// when the peer is a trusted proxy.
    fn client_address(&self, peer: &Peer, headers: &HeaderMap) -> std::net::IpAddr {
        let forwarded = headers
            .get("X-Forwarded-For")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        protocol::client_address(peer.addr.ip(), forwarded, &self.settings.trusted_proxies)
    }

    async fn hash(&self, password: String) -> Option<String> {
        let cost = self.settings.bcrypt_cost;
        let _permit = self.bcrypt.acquire().await.ok()?;
        self.key_work
            .run(move || bcrypt::hash(password, cost).ok())
            .await
            .flatten()
    }

    async fn verify(&self, key: String, hash: String) -> bool {
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        self.key_work
            .run(move || bcrypt::verify(key, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// Equality whose time depends only on the lengths, for comparing secrets.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
