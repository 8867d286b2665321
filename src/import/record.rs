//! One row of acme-dns's `records` table made into what an AcmeDnsAccount and its
//! credential Secret hold. Pure, so every rule is a unit test.
//!
//! acme-dns (db.go) writes `Username` as a lowercase UUID, `Password` as the bcrypt hash
//! of the key at cost 10 (`$2a$10$…`, Go's prefix; bound as bytes, so SQLite keeps it as
//! a BLOB), `Subdomain` as a lowercase UUID, and `AllowFrom` as a JSON array of the CIDRs
//! given at registration (`[]` when none).

use ipnet::IpNet;

use crate::{
    api::{Cidr, MAX_ALLOW_FROM},
    compat::protocol::{canonical_user, parse_cidr},
};

/// A row as the database gave it: each column's bytes, `None` for NULL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    pub subdomain: Option<Vec<u8>>,
    pub allow_from: Option<Vec<u8>>,
}

/// What one acme-dns account becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Lowercase hyphenated UUID, as the credential Secret stores it.
    pub username: String,
    /// The bcrypt hash, unchanged: clients keep their key.
    pub key_hash: String,
    /// The label the account is served under, pinned in `spec.subdomain`.
    pub subdomain: String,
    /// As the CRD accepts them: networks without host bits, no duplicates.
    pub allow_from: Vec<Cidr>,
    /// What was changed on the way, for the operator to read.
    pub notes: Vec<String>,
}

/// A row that cannot be imported, naming the account (its username, else its row
/// number) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{account}: {reason}")]
pub struct BadRow {
    pub account: String,
    pub reason: String,
}

/// Converts row number `index` (from 1, for rows without a usable username).
pub fn convert(index: usize, row: &Row) -> Result<Record, BadRow> {
    let raw_username = text(&row.username);
    let account = match &raw_username {
        Some(u) if !u.trim().is_empty() => format!("account {}", u.trim()),
        _ => format!("row {index} of records"),
    };
    let bad = |reason: String| BadRow {
        account: account.clone(),
        reason,
    };

    let username = raw_username
        .as_deref()
        .and_then(canonical_user)
        .ok_or_else(|| {
            bad("Username is not a UUID, so no acme-dns client can be using it".to_string())
        })?;

    let key_hash = text(&row.password)
        .map(|p| p.trim().to_string())
        .filter(|p| is_bcrypt_hash(p))
        .ok_or_else(|| {
            bad(format!(
                "Password is not a bcrypt hash ($2a$, $2b$ or $2y$ and 60 characters{}), so \
                 no key could ever match it",
                match text(&row.password) {
                    Some(p) if p.len() >= 4 => format!("; it starts with {:?}", &p[..4]),
                    Some(_) => "; it is shorter than 4 characters".into(),
                    None => "; it is empty".into(),
                }
            ))
        })?;

    let subdomain = text(&row.subdomain)
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| is_dns_label(s))
        .ok_or_else(|| {
            bad(format!(
                "Subdomain {:?} is not a single DNS label (letters, digits and hyphens, at \
                 most 63 characters)",
                text(&row.subdomain).unwrap_or_default()
            ))
        })?;

    let mut notes = Vec::new();
    let allow_from = match text(&row.allow_from).map(|a| a.trim().to_string()) {
        None => {
            notes.push(
                "AllowFrom is empty (NULL): imported without an address restriction".to_string(),
            );
            Vec::new()
        }
        Some(json) if json.is_empty() => {
            notes.push("AllowFrom is empty: imported without an address restriction".to_string());
            Vec::new()
        }
        Some(json) => allow_from(&json, &mut notes).map_err(bad)?,
    };

    Ok(Record {
        username,
        key_hash,
        subdomain,
        allow_from,
        notes,
    })
}

/// AllowFrom's JSON array as the CRD's CIDRs. An entry that is not a CIDR is refused
/// rather than dropped: acme-dns ignores such entries, and if every entry were ignored it
/// would let any address update, which an import must not decide silently.
fn allow_from(json: &str, notes: &mut Vec<String>) -> Result<Vec<Cidr>, String> {
    let entries: Option<Vec<String>> = serde_json::from_str(json).map_err(|_| {
        format!("AllowFrom {json:?} is not a JSON array of strings such as [\"192.0.2.0/24\"]")
    })?;
    let mut networks: Vec<IpNet> = Vec::new();
    for entry in entries.unwrap_or_default() {
        // acme-dns strips the brackets of an IPv6 entry before parsing it.
        let text = entry.trim().replace(['[', ']'], "");
        let given = parse_cidr(&text).ok_or_else(|| {
            format!("AllowFrom entry {entry:?} is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32")
        })?;
        let network = given.trunc();
        if network.to_string() != text {
            notes.push(format!(
                "allowfrom {text} is stored as {network}: the same network, written without \
                 host bits as the CRD requires"
            ));
        }
        if networks.contains(&network) {
            notes.push(format!("allowfrom {network} is listed twice: kept once"));
            continue;
        }
        networks.push(network);
    }
    if networks.len() > MAX_ALLOW_FROM {
        return Err(format!(
            "AllowFrom lists {} networks; an AcmeDnsAccount holds at most {MAX_ALLOW_FROM}: \
             merge some into wider networks in the database and import again",
            networks.len()
        ));
    }
    Ok(networks.into_iter().map(|n| Cidr(n.to_string())).collect())
}

fn text(column: &Option<Vec<u8>>) -> Option<String> {
    column
        .as_ref()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// `$2a$10$` + 53 characters of bcrypt's base64, as Go's bcrypt writes; `$2b$` and
/// `$2y$` are the same hash under other names, and our verifier accepts all three.
fn is_bcrypt_hash(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    let prefix_ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    let cost_ok = hash
        .get(4..6)
        .and_then(|c| c.parse::<u32>().ok())
        .is_some_and(|c| (4..=31).contains(&c));
    prefix_ok
        && cost_ok
        && bytes.len() == 60
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/')
}

/// The CRD's rule for `spec.subdomain`.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "c36f50e8-4f3a-4a8b-9a3e-2f1d0c9b8a77";
    const SUB: &str = "d420c923-bbd7-4056-ab64-c3ca54c9b3cf";
    // A cost-10 hash as Go's bcrypt writes it.
    const HASH: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    fn row(allow_from: Option<&str>) -> Row {
        Row {
            username: Some(USER.into()),
            password: Some(HASH.into()),
            subdomain: Some(SUB.into()),
            allow_from: allow_from.map(|a| a.as_bytes().to_vec()),
        }
    }

    fn allow(record: &Record) -> Vec<&str> {
        record.allow_from.iter().map(|c| c.0.as_str()).collect()
    }

    #[test]
    fn an_acme_dns_row_keeps_username_hash_and_subdomain() {
        let record = convert(1, &row(Some("[]"))).unwrap();
        assert_eq!(record.username, USER);
        assert_eq!(record.key_hash, HASH);
        assert_eq!(record.subdomain, SUB);
        assert!(record.allow_from.is_empty());
        assert!(record.notes.is_empty(), "{:?}", record.notes);
    }

    #[test]
    fn allowfrom_json_becomes_networks() {
        let record = convert(1, &row(Some(r#"["192.0.2.0/24","2001:db8::/32"]"#))).unwrap();
        assert_eq!(allow(&record), ["192.0.2.0/24", "2001:db8::/32"]);
        assert!(record.notes.is_empty(), "{:?}", record.notes);
    }

    #[test]
    fn allowfrom_with_host_bits_is_stored_as_its_network_and_said_so() {
        let record = convert(1, &row(Some(r#"["127.0.0.1/8","[2001:db8::1]/64"]"#))).unwrap();
        assert_eq!(allow(&record), ["127.0.0.0/8", "2001:db8::/64"]);
        assert_eq!(record.notes.len(), 2, "{:?}", record.notes);
        assert!(
            record.notes[0].contains("127.0.0.1/8 is stored as 127.0.0.0/8"),
            "{:?}",
            record.notes
        );
    }

    #[test]
    fn duplicate_networks_are_kept_once() {
        // The CRD's allowFrom is a set: the API server would refuse the duplicate.
        let record = convert(1, &row(Some(r#"["10.1.2.3/8","10.0.0.0/8"]"#))).unwrap();
        assert_eq!(allow(&record), ["10.0.0.0/8"]);
        assert!(record.notes.iter().any(|n| n.contains("listed twice")));
    }

    #[test]
    fn null_or_empty_allowfrom_means_unrestricted_with_a_note() {
        for value in [None, Some(""), Some("null")] {
            let record = convert(1, &row(value)).unwrap();
            assert!(record.allow_from.is_empty(), "{value:?}");
            if value != Some("null") {
                assert_eq!(record.notes.len(), 1, "{value:?}");
            }
        }
    }

    #[test]
    fn allowfrom_that_is_not_a_json_array_is_a_bad_row_naming_the_account() {
        let error = convert(1, &row(Some("192.0.2.0/24"))).unwrap_err();
        assert_eq!(error.account, format!("account {USER}"));
        assert!(error.reason.contains("not a JSON array"), "{error}");
        let error = convert(1, &row(Some(r#"{"a":1}"#))).unwrap_err();
        assert!(error.reason.contains("not a JSON array"), "{error}");
    }

    #[test]
    fn allowfrom_entry_that_is_not_a_cidr_is_a_bad_row() {
        for entry in [r#"["192.0.2.1"]"#, r#"["192.0.2.0/33"]"#, r#"["nope"]"#] {
            let error = convert(1, &row(Some(entry))).unwrap_err();
            assert!(error.reason.contains("is not a CIDR"), "{entry}: {error}");
        }
    }

    #[test]
    fn password_that_is_not_a_bcrypt_hash_is_a_bad_row() {
        for password in [
            "secret".to_string(),
            String::new(),
            format!("$2a$10${}", "x".repeat(10)),
            HASH.replace("$2a$", "$1a$"),
            HASH.replace("$10$", "$99$"),
        ] {
            let mut bad = row(Some("[]"));
            bad.password = Some(password.clone().into_bytes());
            let error = convert(1, &bad).unwrap_err();
            assert!(error.reason.contains("not a bcrypt hash"), "{password}");
            assert!(!error.reason.contains(&password) || password.len() < 4);
        }
        let mut missing = row(Some("[]"));
        missing.password = None;
        assert!(convert(1, &missing).is_err());
    }

    #[test]
    fn every_bcrypt_prefix_our_verifier_accepts_is_imported() {
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let mut other = row(Some("[]"));
            other.password = Some(HASH.replace("$2a$", prefix).into_bytes());
            assert!(convert(1, &other).is_ok(), "{prefix}");
        }
    }

    #[test]
    fn our_verifier_accepts_the_2a_hashes_go_writes() {
        // The hash the credential Secret keeps is checked by `bcrypt::verify` on /update.
        let go_style = bcrypt::hash_with_result("a key", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoA);
        assert!(go_style.starts_with("$2a$04$"));
        let record = convert(
            1,
            &Row {
                password: Some(go_style.into_bytes()),
                ..row(Some("[]"))
            },
        )
        .unwrap();
        assert!(bcrypt::verify("a key", &record.key_hash).unwrap());
        assert!(!bcrypt::verify("another key", &record.key_hash).unwrap());
    }

    #[test]
    fn username_that_is_not_a_uuid_is_a_bad_row_and_missing_one_names_the_row() {
        let mut bad = row(Some("[]"));
        bad.username = Some(b"admin".to_vec());
        let error = convert(3, &bad).unwrap_err();
        assert_eq!(error.account, "account admin");
        bad.username = None;
        let error = convert(3, &bad).unwrap_err();
        assert_eq!(error.account, "row 3 of records");
    }

    #[test]
    fn upper_case_uuids_are_made_lowercase() {
        let mut upper = row(Some("[]"));
        upper.username = Some(USER.to_uppercase().into_bytes());
        upper.subdomain = Some(SUB.to_uppercase().into_bytes());
        let record = convert(1, &upper).unwrap();
        assert_eq!(
            (record.username.as_str(), record.subdomain.as_str()),
            (USER, SUB)
        );
    }

    #[test]
    fn subdomain_that_is_not_a_label_is_a_bad_row() {
        for subdomain in ["a.b", "", "-a", &"a".repeat(64)] {
            let mut bad = row(Some("[]"));
            bad.subdomain = Some(subdomain.as_bytes().to_vec());
            let error = convert(1, &bad).unwrap_err();
            assert!(
                error.reason.contains("not a single DNS label"),
                "{subdomain}"
            );
        }
    }

    #[test]
    fn more_networks_than_the_crd_holds_is_a_bad_row() {
        let many: Vec<String> = (0..=MAX_ALLOW_FROM)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        let json = serde_json::to_string(&many).unwrap();
        let error = convert(1, &row(Some(&json))).unwrap_err();
        assert!(error.reason.contains("at most"), "{error}");
    }
}
