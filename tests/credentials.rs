//! `kube-acme-dns credentials` through the binary, for accounts created with kubectl:
//! what it prints is what an acme-dns client stores, and it works against `/update`.

mod common;

use std::{process::Command, time::Duration};

use kube::{Api, api::PostParams};
use serde_json::Value;

use common::acme_api::{TXT, update};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, Cidr, DnsLabel, DomainName};

/// Runs `credentials` with `args`; returns (success, stdout, stderr).
fn credentials(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::BIN)
        .arg("credentials")
        .args(["--zone", "auth.example.test", "--bcrypt-cost", "4"])
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run kube-acme-dns credentials");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn create_account(namespace: &str, name: &str, spec: AcmeDnsAccountSpec) {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(common::client().await, namespace);
    let mut account = AcmeDnsAccount::new(name, spec);
    account.metadata.namespace = Some(namespace.to_string());
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
}

#[tokio::test]
async fn credentials_for_a_kubectl_account_work_and_rotate_retires_the_old_key() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "credentials").await;
    let (serve, api) = common::acme_api::serve(&namespace).await;
    create_account(
        &namespace,
        "example-com",
        AcmeDnsAccountSpec {
            domains: vec![DomainName("example.com".into())],
            allow_from: vec![Cidr("127.0.0.0/8".into())],
            ..Default::default()
        },
    )
    .await;

    // Waits for the controller to assign the subdomain, then prints /register's line.
    let (ok, stdout, stderr) = credentials(&["--namespace", &namespace, "example-com"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line, as /register: {stdout}"
    );
    let first: Value = serde_json::from_str(&stdout).unwrap();
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let account = accounts.get("example-com").await.unwrap();
    let subdomain = account.status.unwrap().subdomain.unwrap().0;
    assert_eq!(first["subdomain"], subdomain);
    assert_eq!(
        first["fulldomain"],
        format!("{subdomain}.auth.example.test")
    );
    assert_eq!(first["allowfrom"], serde_json::json!(["127.0.0.0/8"]));
    let key = first["password"].as_str().unwrap();
    assert_eq!(key.len(), 40);
    let username = first["username"].as_str().unwrap();

    // A client with that JSON updates, and the value is answered over DNS.
    let fqdn = format!("{subdomain}.auth.example.test.");
    common::eventually(
        "the new credentials work",
        Duration::from_secs(15),
        || async { (update(api, username, key, &subdomain, TXT, None).0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        common::dns::txt_values(serve.dns, &fqdn),
        Some(vec![TXT.to_string()])
    );

    // Existing credentials are kept unless asked to rotate.
    let (ok, stdout, stderr) = credentials(&["--namespace", &namespace, "example-com"]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("already has credentials") && stderr.contains("--rotate"),
        "{stderr}"
    );
    assert_eq!(update(api, username, key, &subdomain, TXT, None).0, 200);

    let (ok, stdout, stderr) = credentials(&["--namespace", &namespace, "example-com", "--rotate"]);
    assert!(ok, "{stderr}");
    let second: Value = serde_json::from_str(&stdout).unwrap();
    assert_ne!(second["username"], first["username"]);
    assert_eq!(second["subdomain"], first["subdomain"]);
    let new_key = second["password"].as_str().unwrap();
    let new_username = second["username"].as_str().unwrap();
    common::eventually(
        "the old key is refused",
        Duration::from_secs(10),
        || async { (update(api, username, key, &subdomain, TXT, None).0 == 401).then_some(()) },
    )
    .await;
    // An account the controller refuses (its pinned label is taken) gets no credentials.
    create_account(
        &namespace,
        "duplicate",
        AcmeDnsAccountSpec {
            subdomain: Some(DnsLabel(subdomain.clone())),
            ..Default::default()
        },
    )
    .await;
    let (ok, stdout, stderr) = credentials(&["--namespace", &namespace, "duplicate"]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("is not served") && stderr.contains("already belongs to"),
        "{stderr}"
    );

    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (code, body) = update(api, new_username, new_key, &subdomain, other, None);
    assert_eq!(code, 200, "{body}");
    assert!(
        common::dns::txt_values(serve.dns, &fqdn)
            .unwrap()
            .contains(&other.to_string())
    );
}

#[tokio::test]
async fn credentials_without_a_controller_fail_saying_to_check_it() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // No serve watches this namespace, so no subdomain is ever assigned (test binaries
    // run one at a time, and this file's other serve watches its own namespace only).
    let namespace = common::create_namespace(&client, "credentials-idle").await;
    create_account(&namespace, "idle", AcmeDnsAccountSpec::default()).await;
    let (ok, _, stderr) = credentials(&["--namespace", &namespace, "idle", "--wait", "1"]);
    assert!(!ok);
    assert!(
        stderr.contains("has no subdomain") && stderr.contains("controller"),
        "{stderr}"
    );
    let (ok, _, stderr) = credentials(&["--namespace", &namespace, "missing"]);
    assert!(!ok);
    assert!(stderr.contains("there is no AcmeDnsAccount"), "{stderr}");
}
