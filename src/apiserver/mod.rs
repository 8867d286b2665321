//! A generic aggregated API server for a cert-manager DNS-01 webhook solver, shaped
//! like cert-manager's webhook library: it speaks the Kubernetes side (TLS with a
//! reloading certificate, front-proxy client-certificate trust, discovery, an optional
//! SubjectAccessReview) and hands each challenge to any [`ChallengeSolver`].
//!
//! Reached through the kube-apiserver's aggregation layer, never directly: `/apis/*`
//! answers only the front proxy.

pub mod authorize;
pub mod discovery;
pub mod front_proxy;
pub mod payload;

#[cfg(test)]
mod tests;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kube::Client;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    authorize::Authorizer,
    front_proxy::{AUTH_CONFIGMAP, AUTH_CONFIGMAP_NAMESPACE, FrontProxy, User},
    payload::{Action, Challenge, ChallengePayload, ChallengeReply, DEFAULT_API_VERSION},
};
use crate::http::{self, Limits, ServingCert, TlsConfig, TlsError};

/// What a webhook solver does with a challenge. Failures are reported to cert-manager
/// as `success: false` with the error's text, so it should say what to do next.
pub trait ChallengeSolver: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// Makes the challenge's key answerable as a TXT value; presenting it twice is fine.
    fn present(
        &self,
        challenge: &Challenge,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes exactly this challenge's key, leaving other keys for the name in place.
    fn clean_up(
        &self,
        challenge: &Challenge,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The aggregated API a solver is served under: the issuer's `webhook.groupName` and
/// `webhook.solverName` (the resource).
#[derive(Clone, Copy, Debug)]
pub struct SolverApi {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
}

impl SolverApi {
    pub fn group_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(
        "cannot read {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP}, which says whom to trust as the front proxy: {0}; bind this identity to the Role extension-apiserver-authentication-reader (the Helm chart does)"
    )]
    ReadTrust(#[source] kube::Error),
    #[error(
        "{AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} has no requestheader-client-ca-file: start kube-apiserver with --requestheader-client-ca-file (the aggregation layer)"
    )]
    NoRequestHeaderCa,
    #[error(
        "the request-header CA in {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} is unusable: {0}"
    )]
    BadCa(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Options {
    pub api: SolverApi,
    /// Serving certificate and key (PEM), re-read every `cert_reload_period`.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub cert_reload_period: Duration,
    /// Ask the API server (SubjectAccessReview) about every caller as well.
    pub authorize: bool,
    pub limits: Limits,
}

/// Serves `solver` on `listener` until `shutdown`, then lets challenges in flight
/// finish within the drain bound. Fails at start when the serving certificate or the
/// front proxy's trust cannot be read.
pub async fn serve<S: ChallengeSolver>(
    listener: TcpListener,
    client: Client,
    options: Options,
    solver: S,
    shutdown: CancellationToken,
) -> Result<(), ApiServerError> {
    let serving = ServingCert::load(&options.tls_cert, &options.tls_key)?;
    let proxy = FrontProxy::load(&client).await?;
    let tls = TlsConfig::new(front_proxy::server_config(&serving, &proxy)?);
    let proxy = Arc::new(ArcSwap::from_pointee(proxy));
    tokio::spawn(
        serving
            .clone()
            .keep_current(options.cert_reload_period, shutdown.clone()),
    );
    tokio::spawn(front_proxy::keep_trust_current(
        client.clone(),
        serving,
        proxy.clone(),
        tls.clone(),
        shutdown.clone(),
    ));
    let authorizer = options.authorize.then(|| Authorizer::new(client));
    let api = options.api;
    let app = router(api, proxy, authorizer, solver);
    info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "webhook solver serving {} {}", api.group_version(), api.resource
    );
    http::serve_tls(listener, tls, app, options.limits, shutdown).await;
    Ok(())
}

/// The routes: discovery and the solver resource behind [`front_proxy::authenticate`],
/// health probes open. Expects a [`http::Peer`] in every request's extensions.
pub fn router<S: ChallengeSolver>(
    api: SolverApi,
    proxy: Arc<ArcSwap<FrontProxy>>,
    authorizer: Option<Authorizer>,
    solver: S,
) -> Router {
    let version_path = format!("/apis/{}/{}", api.group, api.version);
    let challenges = ChallengeState {
        solver: Arc::new(solver),
        api,
        authorizer,
    };
    let discovery = Router::new()
        .route("/apis", get(discovery::api_group_list))
        .route(&format!("/apis/{}", api.group), get(discovery::api_group))
        .route(&version_path, get(discovery::api_resource_list))
        .with_state(api);
    let solver = Router::new()
        .route(
            &format!("{version_path}/{}", api.resource),
            post(challenge::<S>),
        )
        .with_state(challenges);
    discovery
        .merge(solver)
        .layer(middleware::from_fn_with_state(
            proxy,
            front_proxy::authenticate,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(not_found)
}

struct ChallengeState<S> {
    solver: Arc<S>,
    api: SolverApi,
    authorizer: Option<Authorizer>,
}

// By hand: a derive would require `S: Clone`.
impl<S> Clone for ChallengeState<S> {
    fn clone(&self) -> Self {
        Self {
            solver: self.solver.clone(),
            api: self.api,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// `POST …/<resource>`: Present or CleanUp. A malformed payload is a 400; anything the
/// solver cannot do is a 200 with `success: false` and a message saying what to do.
async fn challenge<S: ChallengeSolver>(
    State(state): State<ChallengeState<S>>,
    Extension(user): Extension<User>,
    body: Bytes,
) -> Response {
    let payload: ChallengePayload = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body is not a ChallengePayload: {e}"),
            );
        }
    };
    let Some(request) = payload.request else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the ChallengePayload has no request",
        );
    };
    let api_version = payload
        .api_version
        .unwrap_or_else(|| DEFAULT_API_VERSION.to_string());

    if let Some(authorizer) = &state.authorizer {
        let api = state.api;
        match authorizer.may_create(&api, &user).await {
            Ok(true) => {}
            Ok(false) => {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!(
                        "user {:?} may not create {}.{}: grant it in RBAC (the Helm chart grants cert-manager's ServiceAccount)",
                        user.name, api.resource, api.group
                    ),
                );
            }
            Err(e) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!(
                        "cannot check authorization (SubjectAccessReview): {e}; the webhook needs the system:auth-delegator ClusterRole"
                    ),
                );
            }
        }
    }

    let challenge = &request.challenge;
    let action = request.action();
    let outcome = match &action {
        Ok(Action::Present) => state
            .solver
            .present(challenge)
            .await
            .map_err(|e| e.to_string()),
        Ok(Action::CleanUp) => state
            .solver
            .clean_up(challenge)
            .await
            .map_err(|e| e.to_string()),
        Err(unknown) => Err(unknown.to_string()),
    };
    let reply = match outcome {
        Ok(()) => ChallengeReply::success(&api_version, &challenge.uid),
        Err(message) => {
            warn!(action = ?action.ok(), user = %user.name, domain = %challenge.dns_name, error = %message, "challenge not solved");
            ChallengeReply::failure(&api_version, &challenge.uid, message)
        }
    };
    (StatusCode::OK, Json(reply)).into_response()
}

/// A metav1.Status, the error body Kubernetes clients expect.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

async fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}
