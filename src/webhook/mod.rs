//! The cert-manager DNS-01 webhook solver: an HTTPS aggregated API server for group
//! `acme.acmedns.io`, version `v1alpha1`, resource `acme-dns`, reached through the
//! kube-apiserver's aggregation layer.

pub mod auth;
pub mod payload;
pub mod solver;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ConfigMap,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use self::{
    auth::{AUTH_CONFIGMAP, AUTH_CONFIGMAP_NAMESPACE, FrontProxy, ServingCert},
    payload::{ChallengePayload, ChallengeReply, DEFAULT_API_VERSION},
    solver::Solver,
};

pub const GROUP: &str = "acme.acmedns.io";
pub const VERSION: &str = "v1alpha1";
pub const RESOURCE: &str = "acme-dns";

/// Largest ChallengePayload accepted. A real one is well under 4 KiB.
const MAX_BODY: usize = 64 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// HTTPS address of the webhook solver (the APIService's Service points here).
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_ADDR",
        default_value = "127.0.0.1:8443"
    )]
    pub webhook_addr: SocketAddr,

    /// Serving certificate (PEM) for the webhook; re-read when it changes.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_TLS_CERT",
        default_value = "/tls/tls.crt"
    )]
    pub webhook_tls_cert: String,

    /// Private key (PEM) for the webhook's serving certificate.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_TLS_KEY",
        default_value = "/tls/tls.key"
    )]
    pub webhook_tls_key: String,

    /// Also ask the API server (SubjectAccessReview) whether the calling user may create
    /// acme-dns.acme.acmedns.io; the aggregator has already checked it, so this is
    /// defence in depth.
    #[arg(long, env = "KUBE_ACME_DNS_WEBHOOK_AUTHORIZE", default_value_t = false)]
    pub webhook_authorize: bool,

    /// cert-manager's cluster resource namespace: challenges from ClusterIssuers carry
    /// it, and may use accounts in every namespace.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_CLUSTER_RESOURCE_NAMESPACE",
        default_value = "cert-manager"
    )]
    pub cluster_resource_namespace: String,

    /// Let namespaced Issuers use accounts in other namespaces too.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_CROSS_NAMESPACE",
        default_value_t = false
    )]
    pub webhook_cross_namespace: bool,

    /// Most TXT values kept per account; the oldest is dropped beyond it.
    #[arg(long, env = "KUBE_ACME_DNS_MAX_TXT_VALUES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_txt_values: u16,
}

#[derive(Clone)]
struct AppState {
    solver: Arc<Solver>,
    proxy: Arc<ArcSwap<FrontProxy>>,
    client: Client,
    authorize: bool,
}

/// What the TLS layer established about the peer of one connection.
#[derive(Clone, Debug)]
struct Peer {
    /// A client certificate signed by the request-header CA was presented.
    verified: bool,
    common_name: Option<String>,
}

/// Serves the webhook until the process ends.
pub async fn serve(args: WebhookArgs, client: Client, solver: Solver) -> anyhow::Result<()> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), AUTH_CONFIGMAP_NAMESPACE);
    let configmap = configmaps.get(AUTH_CONFIGMAP).await.with_context(|| {
        format!(
            "cannot read {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP}, which says whom to trust as the front proxy: \
             bind this identity to the Role extension-apiserver-authentication-reader (the Helm chart does)"
        )
    })?;
    let proxy = FrontProxy::from_configmap(&configmap)?;
    let serving = ServingCert::read(&args.webhook_tls_cert, &args.webhook_tls_key)?;
    let tls = Arc::new(ArcSwap::new(auth::server_config(&serving, &proxy)?));
    let proxy = Arc::new(ArcSwap::from_pointee(proxy));

    tokio::spawn(keep_trust_current(
        configmaps,
        args.clone(),
        tls.clone(),
        proxy.clone(),
    ));

    let state = AppState {
        solver: Arc::new(solver),
        proxy,
        client,
        authorize: args.webhook_authorize,
    };
    let discovery = format!("/apis/{GROUP}/{VERSION}");
    let app = Router::new()
        .route("/apis", get(api_group_list))
        .route(&format!("/apis/{GROUP}"), get(api_group))
        .route(&discovery, get(api_resource_list))
        .route(&format!("{discovery}/{RESOURCE}"), post(challenge))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_front_proxy,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the webhook", args.webhook_addr))?;
    info!(addr = %listener.local_addr()?, "webhook solver serving {GROUP}/{VERSION} {RESOURCE}");
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(tls.load_full());
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%remote, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certs = tls.get_ref().1.peer_certificates();
            let peer = Peer {
                verified: certs.is_some_and(|c| !c.is_empty()),
                common_name: certs
                    .and_then(|c| c.first())
                    .and_then(|c| auth::common_name(c)),
            };
            let service = app.map_request(move |request: Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(peer.clone());
                request
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .await
            {
                debug!(%remote, error = %e, "webhook connection ended");
            }
        });
    }
}

/// Re-reads the front proxy's CA and names when the ConfigMap changes, and the serving
/// certificate when its files change (cert-manager renews it in place).
async fn keep_trust_current(
    configmaps: Api<ConfigMap>,
    args: WebhookArgs,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    proxy: Arc<ArcSwap<FrontProxy>>,
) {
    let mut changes = watcher(
        configmaps,
        watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIGMAP}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    let mut serving_check = tokio::time::interval(Duration::from_secs(30));
    let mut last_serving = ServingCert::read(&args.webhook_tls_cert, &args.webhook_tls_key)
        .ok()
        .map(|s| (s.cert_pem, s.key_pem));
    loop {
        let rebuild = tokio::select! {
            change = changes.next() => match change {
                Some(Ok(cm)) => match FrontProxy::from_configmap(&cm) {
                    Ok(new) if **proxy.load() != new => {
                        info!("the front proxy's CA or allowed names changed; reloading");
                        proxy.store(Arc::new(new));
                        true
                    }
                    Ok(_) => false,
                    Err(e) => { warn!(error = %e, "ignoring an unusable {AUTH_CONFIGMAP}"); false }
                },
                Some(Err(e)) => { warn!(error = %e, "watching {AUTH_CONFIGMAP} failed; retrying"); false }
                None => return,
            },
            _ = serving_check.tick() => {
                match ServingCert::read(&args.webhook_tls_cert, &args.webhook_tls_key) {
                    Ok(s) if last_serving.as_ref() != Some(&(s.cert_pem.clone(), s.key_pem.clone())) => {
                        info!("the webhook's serving certificate changed; reloading");
                        last_serving = Some((s.cert_pem, s.key_pem));
                        true
                    }
                    Ok(_) => false,
                    Err(e) => { warn!(error = %e, "cannot re-read the serving certificate"); false }
                }
            }
        };
        if rebuild && let Some((cert_pem, key_pem)) = &last_serving {
            let serving = ServingCert {
                cert_pem: cert_pem.clone(),
                key_pem: key_pem.clone(),
            };
            match auth::server_config(&serving, &proxy.load()) {
                Ok(config) => tls.store(config),
                Err(e) => warn!(error = %e, "keeping the previous TLS configuration"),
            }
        }
    }
}

/// `/apis/*` only for the front proxy: a client certificate from the request-header CA
/// with an allowed name, and a user in the username header.
async fn require_front_proxy(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if !peer.verified {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a client certificate from the API server's front proxy is required: call this API through kube-apiserver (kubectl, cert-manager), not directly",
        );
    }
    let proxy = state.proxy.load();
    if !proxy.allows(peer.common_name.as_deref()) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "client certificate name {:?} is not among the front proxy's allowed names {:?}",
                peer.common_name.unwrap_or_default(),
                proxy.allowed_names
            ),
        );
    }
    let user = header_values(request.headers(), &proxy.username_headers)
        .into_iter()
        .next();
    if user.is_none() {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the front proxy sent no user",
        );
    }
    next.run(request).await
}

fn header_values(headers: &HeaderMap, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

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

async fn api_group_list() -> Json<serde_json::Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [api_group_value()],
    }))
}

async fn api_group() -> Json<serde_json::Value> {
    Json(api_group_value())
}

fn api_group_value() -> serde_json::Value {
    let version = json!({ "groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION });
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

async fn api_resource_list() -> Json<serde_json::Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": RESOURCE,
            "singularName": RESOURCE,
            "namespaced": false,
            "kind": "ChallengePayload",
            "verbs": ["create"],
        }],
    }))
}

/// `POST …/acme-dns`: Present or CleanUp. A malformed payload is a 400; anything the
/// solver cannot do is a 200 with `success: false` and a message saying what to do.
async fn challenge(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
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

    if state.authorize {
        let proxy = state.proxy.load();
        let user = header_values(&headers, &proxy.username_headers)
            .into_iter()
            .next()
            .unwrap_or_default();
        let groups = header_values(&headers, &proxy.group_headers);
        match may_create(&state.client, &user, groups).await {
            Ok(true) => {}
            Ok(false) => {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!(
                        "user {user:?} may not create {RESOURCE}.{GROUP}: grant it in RBAC (the Helm chart grants cert-manager's ServiceAccount)"
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

    let reply = match state.solver.handle(&request).await {
        Ok(()) => ChallengeReply::success(&api_version, &request.uid),
        Err(e) => {
            warn!(action = %request.action, domain = %request.dns_name, error = %e, "challenge not solved");
            ChallengeReply::failure(&api_version, &request.uid, e.to_string())
        }
    };
    (StatusCode::OK, Json(reply)).into_response()
}

async fn may_create(client: &Client, user: &str, groups: Vec<String>) -> kube::Result<bool> {
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(groups),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(RESOURCE.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
