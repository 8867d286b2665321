//! `kube-acme-dns import-acme-dns` through the binary, from acme-dns databases made with
//! acme-dns's own schema (SQLite, and a real PostgreSQL server), against the local
//! control plane: the clients of the old acme-dns keep working with the credentials they
//! have, at the names their CNAMEs already point at.

mod common;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};

use common::acme_api::{TXT, update};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel};

/// An account as acme-dns holds it, with the key its client keeps.
struct OldAccount {
    username: String,
    key: String,
    subdomain: String,
    /// The AllowFrom column: the JSON acme-dns writes.
    allow_from: &'static str,
}

impl OldAccount {
    fn new(allow_from: &'static str) -> OldAccount {
        OldAccount {
            username: uuid::Uuid::new_v4().to_string(),
            key: kube_acme_dns::compat::protocol::new_key(),
            subdomain: uuid::Uuid::new_v4().to_string(),
            allow_from,
        }
    }

    /// The hash acme-dns stores: bcrypt at cost 10 with Go's `$2a$` prefix.
    fn hash(&self) -> String {
        bcrypt::hash_with_result(&self.key, 10)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoA)
    }

    fn fqdn(&self) -> String {
        format!("{}.auth.example.test.", self.subdomain)
    }
}

/// acme-dns's tables as its db.go creates them (SQLite flavour), at db_version 1.
const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS acmedns(Name TEXT, Value TEXT);
    CREATE TABLE IF NOT EXISTS records(
        Username TEXT UNIQUE NOT NULL PRIMARY KEY,
        Password TEXT UNIQUE NOT NULL,
        Subdomain TEXT UNIQUE NOT NULL,
        AllowFrom TEXT);
    CREATE TABLE IF NOT EXISTS txt(
        Subdomain TEXT NOT NULL,
        Value TEXT NOT NULL DEFAULT '',
        LastUpdate INT);
    INSERT INTO acmedns (Name, Value) VALUES ('db_version', '1');";

/// The same for PostgreSQL: unquoted names (folded to lower case), and a rowid column.
const POSTGRES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS acmedns(Name TEXT, Value TEXT);
    CREATE TABLE IF NOT EXISTS records(
        Username TEXT UNIQUE NOT NULL PRIMARY KEY,
        Password TEXT UNIQUE NOT NULL,
        Subdomain TEXT UNIQUE NOT NULL,
        AllowFrom TEXT);
    CREATE TABLE IF NOT EXISTS txt(
        rowid SERIAL,
        Subdomain TEXT NOT NULL,
        Value TEXT NOT NULL DEFAULT '',
        LastUpdate INT);
    INSERT INTO acmedns (Name, Value) VALUES ('db_version', '1');";

/// A TXT value acme-dns served once: short-lived, and not imported.
const OLD_TXT: &str = "old-value-from-acme-dns-00000000000000000000";

/// Writes an acme-dns SQLite database holding `accounts`. The hash is bound as bytes,
/// as acme-dns's Go driver does, so SQLite keeps it as a BLOB.
fn sqlite_database(path: &Path, accounts: &[OldAccount]) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(SQLITE_SCHEMA).unwrap();
    for account in accounts {
        db.execute(
            "INSERT INTO records(Username, Password, Subdomain, AllowFrom) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                account.username,
                account.hash().into_bytes(),
                account.subdomain,
                account.allow_from
            ],
        )
        .unwrap();
        db.execute(
            "INSERT INTO txt (Subdomain, Value, LastUpdate) VALUES (?1, ?2, 1)",
            rusqlite::params![account.subdomain, OLD_TXT],
        )
        .unwrap();
    }
}

/// Runs the binary's `import-acme-dns` with `args`; returns (success, stdout, stderr).
fn import(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::BIN)
        .arg("import-acme-dns")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run kube-acme-dns import-acme-dns");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// name → resourceVersion of every account and credential Secret in `namespace`.
async fn versions(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut versions = BTreeMap::new();
    for account in accounts.list(&Default::default()).await.unwrap() {
        versions.insert(
            format!("account/{}", account.name_any()),
            account.resource_version().unwrap(),
        );
    }
    let credentials = ListParams::default().labels("acmedns.io/credentials=true");
    for secret in secrets.list(&credentials).await.unwrap() {
        versions.insert(
            format!("secret/{}", secret.name_any()),
            secret.resource_version().unwrap(),
        );
    }
    versions
}

/// Each imported account is an AcmeDnsAccount named and pinned to its subdomain, with a
/// Secret it owns holding the old username and hash.
async fn assert_imported(client: &Client, namespace: &str, old: &OldAccount, hash: &str) {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let account = accounts.get(&old.subdomain).await.unwrap();
    assert_eq!(account.spec.subdomain.as_ref().unwrap().0, old.subdomain);
    let secret = secrets
        .get(&format!("{}-credentials", old.subdomain))
        .await
        .unwrap();
    assert_eq!(secret.owner_references()[0].uid, account.uid().unwrap());
    let data = secret.data.unwrap();
    assert_eq!(data["username"].0, old.username.as_bytes());
    assert_eq!(data["key-hash"].0, hash.as_bytes());
}

/// The old client's `/update` is accepted (once the controller has the account) and the
/// value is answered over DNS: that value only, none of acme-dns's old ones.
async fn assert_old_client_works(
    serve: &common::Serve,
    api: std::net::SocketAddr,
    old: &OldAccount,
) {
    let (code, body) = common::eventually(
        "the old credentials work",
        Duration::from_secs(15),
        || async {
            let reply = update(api, &old.username, &old.key, &old.subdomain, TXT, None);
            (reply.0 == 200).then_some(reply)
        },
    )
    .await;
    assert_eq!(body, format!(r#"{{"txt": "{TXT}"}}"#), "{code}");
    assert_eq!(
        common::dns::txt_values(serve.dns, &old.fqdn()),
        Some(vec![TXT.to_string()])
    );
}

#[tokio::test]
async fn sqlite_import_keeps_subdomains_keys_and_allowfrom_and_a_second_run_changes_nothing() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "import-sqlite").await;
    let dir = temp_dir("acme-dns-sqlite");
    let open = OldAccount::new("[]");
    // Excludes 127.0.0.1, where the test's requests come from.
    let elsewhere = OldAccount::new(r#"["192.0.2.0/24"]"#);
    // Host bits set, as acme-dns accepts: stored as 127.0.0.0/8.
    let loopback = OldAccount::new(r#"["127.0.0.1/8"]"#);
    let old = [open, elsewhere, loopback];
    let db = dir.join("acme-dns.db");
    sqlite_database(&db, &old);
    let db = db.to_str().unwrap();
    let hashes: Vec<String> = {
        let conn = rusqlite::Connection::open(db).unwrap();
        old.iter()
            .map(|a| {
                conn.query_row(
                    "SELECT Password FROM records WHERE Username = ?1",
                    [&a.username],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .map(|h| String::from_utf8(h).unwrap())
                .unwrap()
            })
            .collect()
    };

    // --dry-run prints every account and Secret as YAML and creates nothing.
    let (ok, yaml, stderr) = import(&["--sqlite", db, "--namespace", &namespace, "--dry-run"]);
    assert!(ok, "{stderr}");
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["AcmeDnsAccount", "Secret"].repeat(3),
        "one account and one Secret per acme-dns account:\n{yaml}"
    );
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert!(versions(&client, &namespace).await.is_empty());

    let (ok, stdout, stderr) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches(": created AcmeDnsAccount").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("allowfrom 127.0.0.1/8 is stored as 127.0.0.0/8"),
        "the changed entry is reported: {stdout}"
    );
    for (account, hash) in old.iter().zip(&hashes) {
        assert!(hash.starts_with("$2a$10$"));
        assert_imported(&client, &namespace, account, hash).await;
    }
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let allow = |name: &str| {
        let accounts = accounts.clone();
        let name = name.to_string();
        async move {
            let a = accounts.get(&name).await.unwrap();
            a.spec
                .allow_from
                .iter()
                .map(|c| c.0.clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(allow(&old[1].subdomain).await, ["192.0.2.0/24"]);
    assert_eq!(allow(&old[2].subdomain).await, ["127.0.0.0/8"]);

    // A second run finds everything as the database says and changes nothing.
    let before = versions(&client, &namespace).await;
    assert_eq!(before.len(), 6);
    let (ok, stdout, stderr) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches(": unchanged AcmeDnsAccount").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("0 created or completed, 3 unchanged, 0 failed"),
        "{stdout}"
    );
    assert_eq!(versions(&client, &namespace).await, before);

    // The old clients keep working against kube-acme-dns with what they have.
    let (serve, api) = common::acme_api::serve(&namespace).await;
    assert_old_client_works(&serve, api, &old[0]).await;
    assert_old_client_works(&serve, api, &old[2]).await;
    // allowfrom is kept: refused from 127.0.0.1, accepted from inside 192.0.2.0/24 (the
    // test's loopback address is a trusted proxy for this serve), so it is the address,
    // not the key, that is refused.
    let restricted = &old[1];
    let refused = update(
        api,
        &restricted.username,
        &restricted.key,
        &restricted.subdomain,
        TXT,
        None,
    );
    assert_eq!(refused, (401, r#"{"error": "forbidden"}"#.to_string()));
    let accepted = update(
        api,
        &restricted.username,
        &restricted.key,
        &restricted.subdomain,
        TXT,
        Some("192.0.2.7"),
    );
    assert_eq!(accepted.0, 200, "{}", accepted.1);
    assert_eq!(
        common::dns::txt_values(serve.dns, &restricted.fqdn()),
        Some(vec![TXT.to_string()])
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_import_skips_bad_rows_by_name_and_a_rerun_completes_the_rest() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "import-pg").await;
    let dir = temp_dir("acme-dns-postgres");
    let postgres = common::postgres::Postgres::start(&dir.join("pg"));
    postgres
        .client("postgres")
        .await
        .batch_execute("CREATE DATABASE acmedns")
        .await
        .unwrap();
    let db = postgres.client("acmedns").await;
    db.batch_execute(POSTGRES_SCHEMA).await.unwrap();
    let old = [
        OldAccount::new("[]"),
        OldAccount::new(r#"["192.0.2.0/24","2001:db8::/32"]"#),
    ];
    // acme-dns's Postgres driver sends the hash as the text of a TEXT column.
    for account in &old {
        db.execute(
            "INSERT INTO records(Username, Password, Subdomain, AllowFrom) VALUES ($1, $2, $3, $4)",
            &[
                &account.username,
                &account.hash(),
                &account.subdomain,
                &account.allow_from,
            ],
        )
        .await
        .unwrap();
    }
    // A row no client could use: its password is not a bcrypt hash.
    let broken = uuid::Uuid::new_v4().to_string();
    db.execute(
        "INSERT INTO records(Username, Password, Subdomain, AllowFrom) VALUES ($1, 'plain', $2, '[]')",
        &[&broken, &uuid::Uuid::new_v4().to_string()],
    )
    .await
    .unwrap();
    let connection = postgres.connection("acmedns");

    let (ok, stdout, stderr) = import(&["--postgres", &connection, "--namespace", &namespace]);
    assert!(!ok, "a skipped row makes the run fail: {stdout}");
    assert!(
        stdout.contains(&format!(
            "skipped account {broken}: Password is not a bcrypt hash"
        )),
        "the bad row is named: {stdout}"
    );
    assert!(
        stdout.contains("2 created or completed, 0 unchanged, 0 failed, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 3 acme-dns accounts were not imported"),
        "{stderr}"
    );
    for account in &old {
        let hash: String = db
            .query_one(
                "SELECT password FROM records WHERE username = $1",
                &[&account.username],
            )
            .await
            .unwrap()
            .get(0);
        assert_imported(&client, &namespace, account, &hash).await;
    }

    // The row fixed (here: removed), the next run completes without touching the rest.
    let before = versions(&client, &namespace).await;
    db.execute("DELETE FROM records WHERE username = $1", &[&broken])
        .await
        .unwrap();
    // The same database named by URL, as many configs write it.
    let url = format!(
        "postgres://{}@127.0.0.1:{}/acmedns",
        common::postgres::USER,
        postgres.port
    );
    let (ok, stdout, stderr) = import(&["--postgres", &url, "--namespace", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("0 created or completed, 2 unchanged, 0 failed, 0 skipped"),
        "{stdout}"
    );
    assert_eq!(versions(&client, &namespace).await, before);

    let (serve, api) = common::acme_api::serve(&namespace).await;
    assert_old_client_works(&serve, api, &old[0]).await;
    drop(serve);
    drop(db);
    drop(postgres);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_conflicting_account_is_named_left_alone_and_the_rest_imported() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "import-conflict").await;
    let dir = temp_dir("acme-dns-conflict");
    let old = [OldAccount::new("[]"), OldAccount::new("[]")];
    let db = dir.join("acme-dns.db");
    sqlite_database(&db, &old);
    let db = db.to_str().unwrap();

    // Someone already made an account under the first one's name, for another label.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let mut squatter = AcmeDnsAccount::new(
        &old[0].subdomain,
        AcmeDnsAccountSpec {
            subdomain: Some(DnsLabel("something-else".into())),
            ..Default::default()
        },
    );
    squatter.metadata.namespace = Some(namespace.clone());
    let squatter = accounts
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();

    let (ok, stdout, stderr) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "AcmeDnsAccount {namespace}/{} exists but is served under subdomain something-else",
            old[0].subdomain
        )),
        "the conflict names the object: {stdout}"
    );
    assert!(
        stderr.contains("1 of 2 acme-dns accounts were not imported"),
        "{stderr}"
    );
    let after = accounts.get(&old[0].subdomain).await.unwrap();
    assert_eq!(
        after.resource_version(),
        squatter.resource_version(),
        "left alone"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    assert!(
        secrets
            .get_opt(&format!("{}-credentials", old[0].subdomain))
            .await
            .unwrap()
            .is_none()
    );
    assert!(accounts.get_opt(&old[1].subdomain).await.unwrap().is_some());

    // Once the operator removes it, a re-run imports the rest.
    accounts
        .delete(&old[0].subdomain, &Default::default())
        .await
        .unwrap();
    common::eventually("the account is gone", Duration::from_secs(10), || async {
        accounts
            .get_opt(&old[0].subdomain)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let (ok, stdout, stderr) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 created or completed, 1 unchanged, 0 failed"),
        "{stdout}"
    );

    // A Secret that now holds other credentials (rotated since) is a conflict too.
    let name = format!("{}-credentials", old[1].subdomain);
    let mut secret = secrets.get(&name).await.unwrap();
    secret.data.as_mut().unwrap().insert(
        "username".into(),
        k8s_openapi::ByteString(uuid::Uuid::new_v4().to_string().into_bytes()),
    );
    let rotated = secrets
        .replace(&name, &PostParams::default(), &secret)
        .await
        .unwrap();
    let (ok, stdout, _) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(!ok);
    assert!(
        stdout.contains(&format!("Secret {namespace}/{name} holds username")),
        "{stdout}"
    );
    assert_eq!(
        secrets.get(&name).await.unwrap().resource_version(),
        rotated.resource_version(),
        "nothing is overwritten"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn dry_run_output_applied_with_kubectl_is_owned_by_the_next_import() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "import-apply").await;
    let dir = temp_dir("acme-dns-apply");
    let old = [OldAccount::new(r#"["10.1.0.0/16"]"#)];
    let db = dir.join("acme-dns.db");
    sqlite_database(&db, &old);
    let db = db.to_str().unwrap();

    let (ok, yaml, stderr) = import(&["--sqlite", db, "--namespace", &namespace, "--dry-run"]);
    assert!(ok, "{stderr}");
    common::run("kubectl", &["apply", "-f", "-"], Some(&yaml));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let name = format!("{}-credentials", old[0].subdomain);
    assert!(
        secrets
            .get(&name)
            .await
            .unwrap()
            .owner_references()
            .is_empty()
    );

    // The import finds the same credentials and makes the account own its Secret, so the
    // Secret goes when the account is deleted.
    let (ok, stdout, stderr) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("is now labelled for and owned by it"),
        "{stdout}"
    );
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let account = accounts.get(&old[0].subdomain).await.unwrap();
    assert_eq!(
        secrets.get(&name).await.unwrap().owner_references()[0].uid,
        account.uid().unwrap()
    );
    let (ok, stdout, _) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok && stdout.contains("1 unchanged"), "{stdout}");

    // An allowFrom edited in the cluster since is kept, and the difference is reported.
    let edit = serde_json::json!({"spec": {"allowFrom": ["10.2.0.0/16"]}});
    let edited = accounts
        .patch(
            &old[0].subdomain,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&edit),
        )
        .await
        .unwrap();
    let (ok, stdout, _) = import(&["--sqlite", db, "--namespace", &namespace]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(
            "the account's allowFrom [10.2.0.0/16] differs from the database's [10.1.0.0/16] \
             and is left as it is"
        ),
        "{stdout}"
    );
    let after = accounts.get(&old[0].subdomain).await.unwrap();
    assert_eq!(after.resource_version(), edited.resource_version());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_account_made_by_hand_for_the_subdomain_gets_the_credentials() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "import-by-hand").await;
    let dir = temp_dir("acme-dns-by-hand");
    let old = [OldAccount::new("[]")];
    let db = dir.join("acme-dns.db");
    sqlite_database(&db, &old);

    // As the migration guide once said: an account pinning the acme-dns subdomain.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let mut by_hand = AcmeDnsAccount::new(
        "example-com",
        AcmeDnsAccountSpec {
            subdomain: Some(DnsLabel(old[0].subdomain.clone())),
            ..Default::default()
        },
    );
    by_hand.metadata.namespace = Some(namespace.clone());
    let by_hand = accounts
        .create(&PostParams::default(), &by_hand)
        .await
        .unwrap();

    let (ok, stdout, stderr) = import(&["--sqlite", db.to_str().unwrap(), "-n", &namespace]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "created Secret {namespace}/example-com-credentials for the existing AcmeDnsAccount \
             {namespace}/example-com"
        )),
        "{stdout}"
    );
    // No second account for the same subdomain, which the controller would refuse.
    assert_eq!(
        accounts
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get("example-com-credentials").await.unwrap();
    assert_eq!(secret.owner_references()[0].uid, by_hand.uid().unwrap());
    assert_eq!(secret.labels()["acmedns.io/account"], "example-com");
    assert_eq!(
        secret.data.unwrap()["username"].0,
        old[0].username.as_bytes()
    );

    // A namespace that does not exist stops the run at once, saying to create it.
    let missing = common::unique_name("no-such-namespace");
    let (ok, stdout, stderr) = import(&["--sqlite", db.to_str().unwrap(), "-n", &missing]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(&format!(
            "namespace {missing} does not exist: create it (kubectl create namespace {missing})"
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreadable_sources_say_what_is_wrong() {
    let dir = temp_dir("acme-dns-errors");
    let missing = dir.join("nothing.db");
    let (ok, _, stderr) = import(&["--sqlite", missing.to_str().unwrap(), "--dry-run"]);
    assert!(!ok);
    assert!(stderr.contains("no such file"), "{stderr}");

    let other = dir.join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes(text TEXT);")
        .unwrap();
    let (ok, _, stderr) = import(&["--sqlite", other.to_str().unwrap(), "--dry-run"]);
    assert!(!ok);
    assert!(stderr.contains("is not an acme-dns database"), "{stderr}");

    let text = dir.join("text.db");
    std::fs::write(&text, "not a database at all, just some text\n".repeat(100)).unwrap();
    let (ok, _, stderr) = import(&["--sqlite", text.to_str().unwrap(), "--dry-run"]);
    assert!(!ok);
    assert!(stderr.contains("as an SQLite database"), "{stderr}");

    // Nothing listens on a port just found free.
    let port = common::free_port();
    let (ok, _, stderr) = import(&[
        "--postgres",
        &format!("host=127.0.0.1 port={port} user=acmedns password=s3cret dbname=acmedns"),
        "--dry-run",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/acmedns"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password is never printed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
