//! The acme-dns HTTP API on the wire, as its clients rely on it: request bodies with
//! case-insensitive keys (Go's JSON decoder), the credential and TXT formats, the
//! one-line register answer, and the error bodies. Pure: no I/O, so every rule is a
//! table test.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// The error codes acme-dns answers with, in `{"error": "<code>"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    MalformedJsonPayload,
    InvalidAllowfromCidr,
    Forbidden,
    BadTxt,
    BadSubdomain,
    DbError,
    /// Ours: `/register` from a source over its limit (429 with `Retry-After`).
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJsonPayload => "malformed_json_payload",
            ErrorCode::InvalidAllowfromCidr => "invalid_allowfrom_cidr",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadTxt => "bad_txt",
            ErrorCode::BadSubdomain => "bad_subdomain",
            ErrorCode::DbError => "db_error",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// The body acme-dns writes, byte for byte: a space after the colon.
    pub fn body(self) -> String {
        format!("{{\"error\": \"{}\"}}", self.as_str())
    }
}

/// The value of `key` in a JSON object, matching the key without regard to case as Go's
/// decoder does (`allowfrom`, `AllowFrom`, `ALLOWFROM`). An exact match wins.
fn field<'a>(object: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A `/register` body: nothing, `null`, or an object whose only field read is
/// `allowfrom` (a list of CIDRs). Everything else in it is ignored, as acme-dns does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The entries as the client wrote them, brackets removed: echoed in the answer.
    pub allow_from_text: Vec<String>,
    pub allow_from: Vec<IpNet>,
}

pub fn parse_register(body: &[u8]) -> Result<RegisterRequest, ErrorCode> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RegisterRequest::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| ErrorCode::MalformedJsonPayload)?;
    let object = match value {
        Value::Null => return Ok(RegisterRequest::default()),
        Value::Object(object) => object,
        _ => return Err(ErrorCode::MalformedJsonPayload),
    };
    let entries = match field(&object, "allowfrom") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entries)) => entries
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(ErrorCode::MalformedJsonPayload)?,
        Some(_) => return Err(ErrorCode::MalformedJsonPayload),
    };
    let mut request = RegisterRequest::default();
    for entry in entries {
        let text = entry.trim().trim_start_matches('[').replace(']', "");
        let cidr = parse_cidr(&text).ok_or(ErrorCode::InvalidAllowfromCidr)?;
        request.allow_from_text.push(text);
        request.allow_from.push(cidr);
    }
    Ok(request)
}

/// `192.0.2.0/24` or `2001:db8::/32`. A bare address is not a CIDR (acme-dns refuses
/// it too); host bits may be set, as Go's ParseCIDR allows.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    IpNet::new(address, prefix).ok()
}

/// A `/update` body: `subdomain` and `txt`, keys case-insensitive. Missing fields are
/// empty, so the credential checks decide (acme-dns answers `forbidden`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateRequest {
    pub subdomain: String,
    pub txt: String,
}

/// Parses an update body; `None` when it is not a JSON object with string fields.
pub fn parse_update(body: &[u8]) -> Option<UpdateRequest> {
    let Value::Object(object) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    let text = |key: &str| match field(&object, key) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    };
    Some(UpdateRequest {
        subdomain: text("subdomain")?,
        txt: text("txt")?,
    })
}

fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An API key as acme-dns issues them: exactly 40 characters of `A-Za-z0-9-_`.
pub fn is_valid_key(key: &str) -> bool {
    key.len() == 40 && is_base64url(key)
}

/// A DNS-01 value: the SHA-256 digest in base64url without padding, 43 characters.
pub fn is_valid_txt(txt: &str) -> bool {
    txt.len() == 43 && is_base64url(txt)
}

/// The `X-Api-User` header as a lowercase hyphenated UUID; braces, `urn:uuid:` and
/// upper case are accepted, as acme-dns's UUID parser does.
pub fn canonical_user(header: &str) -> Option<String> {
    uuid::Uuid::try_parse(header.trim())
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// A new API key: 40 characters of `A-Za-z0-9-_` from the operating system's CSPRNG.
/// 64 symbols take exactly 6 bits of each random byte, so every symbol is equally
/// likely.
pub fn new_key() -> String {
    const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 40];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes
        .iter()
        .map(|b| SYMBOLS[(b & 63) as usize] as char)
        .collect()
}

/// The `/register` answer: one line, keys in acme-dns's order (acme.sh reads it with
/// `sed`).
pub fn register_answer(
    username: &str,
    password: &str,
    fulldomain: &str,
    subdomain: &str,
    allow_from: &[String],
) -> String {
    // serde_json keeps insertion order only with a feature; write the object by hand
    // and let serde_json quote each string.
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let allow: Vec<String> = allow_from.iter().map(|s| quote(s)).collect();
    format!(
        "{{\"username\":{},\"password\":{},\"fulldomain\":{},\"subdomain\":{},\"allowfrom\":[{}]}}",
        quote(username),
        quote(password),
        quote(fulldomain),
        quote(subdomain),
        allow.join(",")
    )
}

/// The `/update` answer: the value now served.
pub fn update_answer(txt: &str) -> String {
    format!("{{\"txt\": {}}}", Value::String(txt.to_string()))
}

/// The address an update comes from: the TCP peer, unless the peer is a trusted proxy;
/// then the right-most address in `forwarded` (an `X-Forwarded-For` value) that is not
/// itself a trusted proxy. A client cannot choose its address by writing the header:
/// only what trusted proxies appended counts.
pub fn client_address(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(forwarded) = forwarded else {
        return peer;
    };
    let mut chain = Vec::new();
    for part in forwarded.split(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => chain.push(canonical_ip(ip)),
            // An entry that is not an address ends what can be trusted.
            Err(_) => chain.clear(),
        }
    }
    let mut client = peer;
    for ip in chain.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports)
/// as the IPv4 address, so IPv4 CIDRs match them.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `client` may update an account with these `allow_from` CIDRs: always when
/// there are none.
pub fn allowed(client: IpAddr, allow_from: &[IpNet]) -> bool {
    allow_from.is_empty()
        || allow_from
            .iter()
            .any(|net| net.contains(&canonical_ip(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_byte_for_byte_acme_dns() {
        assert_eq!(ErrorCode::Forbidden.body(), r#"{"error": "forbidden"}"#);
        assert_eq!(
            ErrorCode::MalformedJsonPayload.body(),
            r#"{"error": "malformed_json_payload"}"#
        );
    }

    #[test]
    fn register_accepts_no_body_empty_object_and_null() {
        for body in ["", "  \n", "{}", "null"] {
            assert_eq!(
                parse_register(body.as_bytes()),
                Ok(RegisterRequest::default()),
                "{body:?}"
            );
        }
    }

    #[test]
    fn register_reads_allowfrom_in_any_case_and_ignores_the_rest() {
        for key in ["allowfrom", "AllowFrom", "ALLOWFROM"] {
            let body = format!(
                r#"{{"{key}": ["192.0.2.0/24", "[2001:db8::/32]"], "username": "x", "txt": "y"}}"#
            );
            let request = parse_register(body.as_bytes()).unwrap();
            assert_eq!(request.allow_from_text, ["192.0.2.0/24", "2001:db8::/32"]);
            assert_eq!(request.allow_from.len(), 2);
        }
    }

    #[test]
    fn register_refuses_what_acme_dns_refuses() {
        let cases = [
            ("not json", ErrorCode::MalformedJsonPayload),
            (
                r#"{"allowfrom": "1.2.3.4/32"}"#,
                ErrorCode::MalformedJsonPayload,
            ),
            (r#"{"allowfrom": [1]}"#, ErrorCode::MalformedJsonPayload),
            ("[]", ErrorCode::MalformedJsonPayload),
            (
                r#"{"allowfrom": ["invalid"]}"#,
                ErrorCode::InvalidAllowfromCidr,
            ),
            (
                r#"{"allowfrom": ["1.2.3.4/33"]}"#,
                ErrorCode::InvalidAllowfromCidr,
            ),
            (
                r#"{"allowfrom": ["1.2.3.4"]}"#,
                ErrorCode::InvalidAllowfromCidr,
            ),
            (
                r#"{"allowfrom": ["10.0.0.0/8", "bad"]}"#,
                ErrorCode::InvalidAllowfromCidr,
            ),
        ];
        for (body, code) in cases {
            assert_eq!(parse_register(body.as_bytes()), Err(code), "{body}");
        }
    }

    #[test]
    fn update_reads_subdomain_and_txt_in_any_case() {
        let body = br#"{"SubDomain": "abc", "Txt": "value"}"#;
        assert_eq!(
            parse_update(body),
            Some(UpdateRequest {
                subdomain: "abc".into(),
                txt: "value".into()
            })
        );
        assert_eq!(parse_update(b"{}"), Some(UpdateRequest::default()));
        assert_eq!(parse_update(b"garbage"), None);
        assert_eq!(parse_update(br#"{"txt": 5}"#), None);
    }

    #[test]
    fn keys_and_txt_values_have_exact_formats() {
        assert!(is_valid_key(&"a".repeat(40)));
        assert!(!is_valid_key(&"a".repeat(39)));
        assert!(!is_valid_key(&format!("{}+", "a".repeat(39))));
        let digest = "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo";
        assert!(is_valid_txt(digest));
        assert!(!is_valid_txt(&digest[1..]));
        assert!(!is_valid_txt(&format!("{}=", &digest[1..])));
    }

    #[test]
    fn users_are_canonicalised_like_acme_dns() {
        let canonical = "c36f50e8-4632-44f0-83fe-e070fef28a10";
        for header in [
            canonical,
            "C36F50E8-4632-44F0-83FE-E070FEF28A10",
            "{c36f50e8-4632-44f0-83fe-e070fef28a10}",
            "urn:uuid:c36f50e8-4632-44f0-83fe-e070fef28a10",
        ] {
            assert_eq!(
                canonical_user(header).as_deref(),
                Some(canonical),
                "{header}"
            );
        }
        assert_eq!(canonical_user("not-a-uuid"), None);
    }

    #[test]
    fn new_keys_are_valid_and_differ() {
        let (a, b) = (new_key(), new_key());
        assert!(is_valid_key(&a) && is_valid_key(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn register_answer_is_one_line_in_acme_dns_key_order() {
        let answer = register_answer(
            "u",
            "p",
            "s.auth.example.org",
            "s",
            &["192.0.2.0/24".into()],
        );
        assert_eq!(
            answer,
            r#"{"username":"u","password":"p","fulldomain":"s.auth.example.org","subdomain":"s","allowfrom":["192.0.2.0/24"]}"#
        );
        assert!(register_answer("u", "p", "f", "s", &[]).ends_with(r#""allowfrom":[]}"#));
        assert_eq!(update_answer("v"), r#"{"txt": "v"}"#);
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| parse_cidr(n).unwrap()).collect()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("192.0.2.1"), &trusted),
            ip("203.0.113.9")
        );
        // Through a trusted proxy: the right-most address that is not a proxy.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("192.0.2.1, 198.51.100.7, 10.0.0.1"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A trusted proxy without the header is the client.
        assert_eq!(
            client_address(ip("10.0.0.2"), None, &trusted),
            ip("10.0.0.2")
        );
        // IPv4-mapped peers match IPv4 CIDRs.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), Some("2001:db8::5"), &trusted),
            ip("2001:db8::5")
        );
    }

    #[test]
    fn allowfrom_matches_ipv4_and_ipv6_and_empty_allows_all() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let allow = nets(&["192.0.2.0/24", "2001:db8::/32"]);
        assert!(allowed(ip("192.0.2.77"), &allow));
        assert!(allowed(ip("::ffff:192.0.2.77"), &allow));
        assert!(allowed(ip("2001:db8::1"), &allow));
        assert!(!allowed(ip("198.51.100.1"), &allow));
        assert!(!allowed(ip("2001:db9::1"), &allow));
        assert!(allowed(ip("198.51.100.1"), &[]));
    }
}
