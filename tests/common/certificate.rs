//! What a user checks in an issued certificate: the names it covers and the CA it chains to.

use std::process::{Command, Stdio};

use super::pebble::Pebble;

/// The DNS names of the first certificate in a PEM chain, sorted.
pub fn dns_names(chain_pem: &[u8]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};
    let (_, pem) = parse_x509_pem(chain_pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let san = cert
        .subject_alternative_name()
        .expect("a valid SAN extension")
        .expect("a SAN extension");
    let mut names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// Asserts that the PEM chain names exactly `domain` and `*.domain` and that openssl, an
/// independent verifier, follows it up to the root of this Pebble run.
pub fn assert_wildcard_issued_by(chain_pem: &[u8], domain: &str, pebble: &Pebble) {
    assert_eq!(
        dns_names(chain_pem),
        [format!("*.{domain}"), domain.to_string()],
        "the certificate names exactly the requested names"
    );
    let dir = std::env::temp_dir().join(super::unique_name("issued"));
    std::fs::create_dir_all(&dir).unwrap();
    let chain_path = dir.join("chain.pem");
    std::fs::write(&chain_path, chain_pem).unwrap();
    let pebble_root = dir.join("pebble-root.pem");
    std::fs::write(&pebble_root, pebble.root_pem()).unwrap();
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            pebble_root.to_str().unwrap(),
            "-untrusted",
        ])
        .arg(&chain_path)
        .arg(&chain_path)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "signed by Pebble: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
