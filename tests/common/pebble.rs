//! Pebble, Let's Encrypt's small ACME test server, on loopback. It validates DNS-01 by
//! asking the resolver it is given, so a CNAME from `_acme-challenge.<domain>` into our
//! zone is followed as Let's Encrypt follows it. `e2e/pebble.sh build` builds it.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use super::{
    daemon::{Daemon, start_on_free_ports},
    https::{self, Request},
    pki::Ca,
};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that verifies Pebble's HTTPS (a ClusterIssuer's caBundle).
    pub https_ca: Ca,
    management: SocketAddr,
    _daemon: Daemon,
}

impl Pebble {
    /// A ClusterIssuer `name` for this Pebble with one DNS-01 solver (`dns01`, the
    /// solver's own object: `{"webhook": …}`, `{"rfc2136": …}`).
    pub fn cluster_issuer(&self, name: &str, dns01: serde_json::Value) -> serde_json::Value {
        use base64::{Engine, prelude::BASE64_STANDARD};
        serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": { "name": name },
            "spec": { "acme": {
                "server": self.directory,
                "caBundle": BASE64_STANDARD.encode(&self.https_ca.cert.cert_pem),
                "privateKeySecretRef": { "name": format!("{name}-account-key") },
                "solvers": [ { "dns01": dns01 } ],
            } },
        })
    }

    /// Starts Pebble with its HTTPS listeners on free 127.0.0.1 ports, asking `resolver`
    /// for every DNS lookup; returns once its directory and management API answer.
    pub fn start(dir: &Path, resolver: SocketAddr) -> Pebble {
        assert!(
            resolver.ip().is_loopback(),
            "resolver off loopback: {resolver}"
        );
        let binary = super::run(
            concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/pebble.sh"),
            &["path"],
            None,
        );
        let binary = binary.trim();
        assert!(
            Path::new(binary).is_file(),
            "no Pebble at {binary}: run `e2e/pebble.sh build` (make test does)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let https_ca = Ca::new("kube-acme-dns e2e pebble HTTPS CA");
        let serving = https_ca.serving(&["localhost", "127.0.0.1", "::1"]);
        let (cert, key) = serving.write(dir, "pebble-tls");
        let config = dir.join("pebble-config.json");
        let (directory, management, daemon) = start_on_free_ports(4, |ports| {
            let [acme, management, http01, tlsalpn01] = ports else {
                unreachable!()
            };
            // httpPort/tlsPort are where Pebble would connect for HTTP-01 and TLS-ALPN-01;
            // only DNS-01 is used, so they are free ports nothing listens on.
            let json = serde_json::json!({ "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http01,
                "tlsPort": tlsalpn01,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }});
            std::fs::write(&config, json.to_string()).unwrap();
            let mut command = Command::new(binary);
            command
                .arg("-config")
                .arg(&config)
                .arg("-dnsserver")
                .arg(resolver.to_string())
                // No nonce rejected at random, validation at once, fresh challenges for
                // every order (so each issuance really runs DNS-01).
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0");
            let mut daemon = Daemon::spawn("pebble", command, dir);
            let acme: SocketAddr = format!("127.0.0.1:{acme}").parse().unwrap();
            let management: SocketAddr = format!("127.0.0.1:{management}").parse().unwrap();
            let ca = https_ca.cert.cert_der();
            daemon.wait_ready(Duration::from_secs(30), || {
                for (addr, path) in [(acme, "/dir"), (management, "/roots/0")] {
                    match https::send(addr, "localhost", &ca, None, &Request::get(path)) {
                        Ok((200, _)) => {}
                        Ok((status, body)) => return Err(format!("GET {path}: {status} {body}")),
                        Err(e) => return Err(format!("GET {path}: {e}")),
                    }
                }
                Ok(())
            })?;
            Ok((format!("https://{acme}/dir"), management, daemon))
        });
        Pebble {
            directory,
            https_ca,
            management,
            _daemon: daemon,
        }
    }

    /// Pebble's issuing root, new each time it starts: what issued certificates chain
    /// up to.
    pub fn root_pem(&self) -> String {
        let (status, body) = https::send(
            self.management,
            "localhost",
            &self.https_ca.cert.cert_der(),
            None,
            &Request::get("/roots/0"),
        )
        .expect("Pebble's management API answers");
        assert_eq!(status, 200, "GET /roots/0: {body}");
        body
    }
}
