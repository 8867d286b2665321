//! The router driven in process with a recording solver: authentication, payload
//! parsing and replies, without TLS or a cluster (the webhook integration test covers
//! those through the real aggregation layer).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use axum::{body::Body, http::Request};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::http::Peer;

const API: SolverApi = SolverApi {
    group: "acme.example.test",
    version: "v1alpha1",
    resource: "test-solver",
};
const CHALLENGES: &str = "/apis/acme.example.test/v1alpha1/test-solver";

#[derive(Default)]
struct RecordingSolver {
    calls: Mutex<Vec<(Action, String)>>,
}

impl ChallengeSolver for Arc<RecordingSolver> {
    type Error = String;

    async fn present(&self, challenge: &Challenge) -> Result<(), String> {
        self.record(Action::Present, challenge)
    }

    async fn clean_up(&self, challenge: &Challenge) -> Result<(), String> {
        self.record(Action::CleanUp, challenge)
    }
}

impl RecordingSolver {
    fn record(&self, action: Action, challenge: &Challenge) -> Result<(), String> {
        if challenge.dns_name == "broken.example.test" {
            return Err("no account for broken.example.test: create one".into());
        }
        self.calls
            .lock()
            .unwrap()
            .push((action, challenge.key.clone()));
        Ok(())
    }
}

fn certificate(common_name: &str) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn app(solver: Arc<RecordingSolver>) -> Router {
    let proxy = FrontProxy {
        ca_pem: String::new(),
        allowed_names: vec!["front-proxy-client".into()],
        username_headers: vec!["X-Remote-User".into()],
        group_headers: vec!["X-Remote-Group".into()],
    };
    router(API, Arc::new(ArcSwap::from_pointee(proxy)), None, solver)
}

enum Caller {
    FrontProxy,
    NoCertificate,
    OtherName,
    FrontProxyWithoutUser,
}

async fn call(app: &Router, caller: Caller, method: &str, path: &str, body: &str) -> (u16, Value) {
    let certificates = match caller {
        Caller::NoCertificate => vec![],
        Caller::OtherName => vec![certificate("someone-else")],
        Caller::FrontProxy | Caller::FrontProxyWithoutUser => {
            vec![certificate("front-proxy-client")]
        }
    };
    let mut request = Request::builder().method(method).uri(path);
    if !matches!(caller, Caller::FrontProxyWithoutUser) {
        request = request
            .header(
                "X-Remote-User",
                "system:serviceaccount:cert-manager:cert-manager",
            )
            .header("X-Remote-Group", "system:serviceaccounts");
    }
    let mut request = request.body(Body::from(body.to_string())).unwrap();
    request.extensions_mut().insert(Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        certificates,
    });
    let response = app.clone().oneshot(request).await.unwrap();
    let code = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn payload(action: &str, domain: &str, key: &str) -> String {
    json!({
        "request": {
            "uid": "",
            "action": action,
            "type": "dns-01",
            "dnsName": domain,
            "key": key,
            "resourceNamespace": "team",
            "resolvedFQDN": format!("_acme-challenge.{domain}."),
            "resolvedZone": format!("{domain}."),
        }
    })
    .to_string()
}

#[tokio::test]
async fn present_and_clean_up_reach_the_solver_as_actions() {
    let solver = Arc::new(RecordingSolver::default());
    let app = app(solver.clone());
    for action in ["Present", "CleanUp"] {
        let (code, reply) = call(
            &app,
            Caller::FrontProxy,
            "POST",
            CHALLENGES,
            &payload(action, "example.test", "k1"),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
        assert_eq!(reply["response"]["success"], true, "{reply}");
        assert_eq!(reply["kind"], "ChallengePayload", "{reply}");
        assert_eq!(
            reply["apiVersion"], "acme.cert-manager.io/v1alpha1",
            "{reply}"
        );
    }
    assert_eq!(
        *solver.calls.lock().unwrap(),
        [
            (Action::Present, "k1".to_string()),
            (Action::CleanUp, "k1".to_string())
        ]
    );
}

#[tokio::test]
async fn a_solver_failure_is_a_200_with_its_message() {
    let app = app(Arc::default());
    let (code, reply) = call(
        &app,
        Caller::FrontProxy,
        "POST",
        CHALLENGES,
        &payload("Present", "broken.example.test", "k"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(reply["response"]["success"], false, "{reply}");
    let message = reply["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("create one"), "{reply}");
}

#[tokio::test]
async fn an_unknown_action_is_a_200_failure_and_never_reaches_the_solver() {
    let solver = Arc::new(RecordingSolver::default());
    let app = app(solver.clone());
    let (code, reply) = call(
        &app,
        Caller::FrontProxy,
        "POST",
        CHALLENGES,
        &payload("Destroy", "example.test", "k"),
    )
    .await;
    assert_eq!(code, 200);
    let message = reply["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("Present or CleanUp"), "{reply}");
    assert!(solver.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_payload_is_a_400_status() {
    let app = app(Arc::default());
    let (code, reply) = call(&app, Caller::FrontProxy, "POST", CHALLENGES, "{not json").await;
    assert_eq!(code, 400);
    assert_eq!(reply["kind"], "Status");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("not a ChallengePayload")
    );
    let (code, reply) = call(&app, Caller::FrontProxy, "POST", CHALLENGES, "{}").await;
    assert_eq!(code, 400);
    assert!(reply["message"].as_str().unwrap().contains("no request"));
}

#[tokio::test]
async fn discovery_lists_the_solver_resource() {
    let app = app(Arc::default());
    let (code, list) = call(
        &app,
        Caller::FrontProxy,
        "GET",
        "/apis/acme.example.test/v1alpha1",
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["groupVersion"], "acme.example.test/v1alpha1");
    assert_eq!(list["resources"][0]["name"], "test-solver");
    assert_eq!(list["resources"][0]["verbs"], json!(["create"]));
    let (_, groups) = call(&app, Caller::FrontProxy, "GET", "/apis", "").await;
    assert_eq!(groups["groups"][0]["name"], "acme.example.test");
    let (_, group) = call(
        &app,
        Caller::FrontProxy,
        "GET",
        "/apis/acme.example.test",
        "",
    )
    .await;
    assert_eq!(group["preferredVersion"]["version"], "v1alpha1");
}

#[tokio::test]
async fn callers_without_the_front_proxy_certificate_get_401() {
    let app = app(Arc::default());
    let (code, reply) = call(&app, Caller::NoCertificate, "GET", "/apis", "").await;
    assert_eq!(code, 401);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("through kube-apiserver")
    );
}

#[tokio::test]
async fn a_certificate_with_another_name_gets_403() {
    let app = app(Arc::default());
    let (code, reply) = call(&app, Caller::OtherName, "POST", CHALLENGES, "{}").await;
    assert_eq!(code, 403);
    assert!(reply["message"].as_str().unwrap().contains("someone-else"));
}

#[tokio::test]
async fn the_front_proxy_without_a_user_gets_401() {
    let app = app(Arc::default());
    let (code, reply) = call(&app, Caller::FrontProxyWithoutUser, "GET", "/apis", "").await;
    assert_eq!(code, 401);
    assert!(reply["message"].as_str().unwrap().contains("no user"));
}

#[tokio::test]
async fn health_probes_need_no_certificate_and_unknown_paths_are_404() {
    let app = app(Arc::default());
    let (code, _) = call(&app, Caller::NoCertificate, "GET", "/healthz", "").await;
    assert_eq!(code, 200);
    let (code, reply) = call(&app, Caller::NoCertificate, "GET", "/openapi/v2", "").await;
    assert_eq!(code, 404);
    assert_eq!(reply["reason"], "NotFound");
}
