//! The acme-dns compatible API through the running binary, against the local control
//! plane: what a client that speaks acme-dns sees (`curl` stands in for it here).

mod common;

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde_json::Value;

use kube_acme_dns::api::AcmeDnsAccount;

const TXT: &str = "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo";

/// POSTs `body` with `headers`; returns the status and the body.
fn post(api: SocketAddr, path: &str, headers: &[String], body: &str) -> (u16, String) {
    let mut args = vec![
        "-s".to_string(),
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        "--data-binary".into(),
        body.into(),
    ];
    for header in headers {
        args.extend(["-H".to_string(), header.clone()]);
    }
    args.push(format!("http://{api}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run("curl", &args, None);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[tokio::test]
async fn register_update_answered_by_dns_wrong_keys_refused_and_deregister() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // The chart's RBAC lets the API register in the release namespace.
    let namespace = common::RELEASE_NAMESPACE;
    let lease = common::unique_name("compat");
    let api: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    // Runs as the chart's ServiceAccount, so this also proves the chart's RBAC.
    let serve = common::spawn_serve(
        namespace,
        &lease,
        &[
            "--roles",
            "dns,controller,api",
            "--api-addr",
            &api.to_string(),
            "--api-namespace",
            namespace,
            "--api-bcrypt-cost",
            "4",
        ],
    );
    common::wait_ready(&serve).await;
    common::eventually("the API listens", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(api).ok()
    })
    .await;

    // lego's client library registers with a `null` body.
    let (code, body) = post(api, "/register", &[], "null");
    assert_eq!(code, 201, "{body}");
    assert!(!body.contains('\n'), "one line: {body}");
    let account: Value = serde_json::from_str(&body).unwrap();
    let subdomain = account["subdomain"].as_str().unwrap();
    let password = account["password"].as_str().unwrap();
    assert_eq!(
        account["fulldomain"],
        format!("{subdomain}.auth.example.test")
    );

    // The account is an AcmeDnsAccount with its subdomain pinned; the Secret it owns
    // holds the username and a bcrypt hash, never the key itself.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    let created = accounts.get(subdomain).await.unwrap();
    assert_eq!(created.spec.subdomain.as_ref().unwrap().0, subdomain);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get(&format!("{subdomain}-credentials"))
        .await
        .unwrap();
    assert_eq!(secret.owner_references()[0].uid, created.uid().unwrap());
    let data = secret.data.unwrap();
    assert_eq!(
        data["username"].0,
        account["username"].as_str().unwrap().as_bytes()
    );
    let hash = String::from_utf8(data["key-hash"].0.clone()).unwrap();
    assert!(hash.starts_with("$2"), "a bcrypt hash: {hash}");
    assert!(bcrypt::verify(password, &hash).unwrap());
    assert!(!data.values().any(|v| v.0 == password.as_bytes()));

    // acme.sh sends its default form content type with a JSON body.
    let credentials = [
        format!("X-Api-User: {}", account["username"].as_str().unwrap()),
        format!("X-Api-Key: {password}"),
        "Content-Type: application/x-www-form-urlencoded".to_string(),
    ];
    let update = format!(r#"{{"subdomain": "{subdomain}", "txt": "{TXT}"}}"#);
    // The controller assigns the pinned subdomain within moments of registration.
    let (code, body) = common::eventually("update accepted", Duration::from_secs(10), || async {
        let reply = post(api, "/update", &credentials, &update);
        (reply.0 == 200).then_some(reply)
    })
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, format!(r#"{{"txt": "{TXT}"}}"#).as_str())
    );
    // Answered by this replica as soon as /update returns.
    let fqdn = format!("{subdomain}.auth.example.test.");
    assert_eq!(
        common::dns::txt_values(serve.dns, &fqdn),
        Some(vec![TXT.to_string()])
    );

    let wrong = [
        credentials[0].clone(),
        format!("X-Api-Key: {}", "A".repeat(40)),
    ];
    let (code, body) = post(api, "/update", &wrong, &update);
    assert_eq!((code, body.as_str()), (401, r#"{"error": "forbidden"}"#));
    let (code, body) = post(api, "/nothing", &[], "");
    assert_eq!((code, body.as_str()), (404, "404 page not found\n"));

    // Deregistration with the account's own credentials removes the account and the
    // Secret, and the credentials stop working.
    let (code, body) = post(api, "/deregister", &credentials, "");
    assert_eq!(code, 200, "{body}");
    assert!(accounts.get_opt(subdomain).await.unwrap().is_none());
    assert!(
        secrets
            .get_opt(&format!("{subdomain}-credentials"))
            .await
            .unwrap()
            .is_none()
    );
    common::eventually("credentials refused", Duration::from_secs(5), || async {
        (post(api, "/update", &credentials, &update).0 == 401).then_some(())
    })
    .await;
}
