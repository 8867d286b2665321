//! The acme-dns compatible API's request parsing: the /register and /update bodies,
//! their CIDRs, and the credential headers. Never panics; what the parsers accept
//! holds the invariants the handlers rely on.

#![no_main]

use kube_acme_dns::compat::protocol::{
    canonical_user, is_valid_key, is_valid_txt, parse_cidr, parse_register, parse_update,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_register(data) {
        assert_eq!(request.allow_from.len(), request.allow_from_text.len());
        for (text, net) in request.allow_from_text.iter().zip(&request.allow_from) {
            assert_eq!(parse_cidr(text), Some(*net), "{text:?} reads differently twice");
        }
    }
    if let Some(update) = parse_update(data) {
        let _ = is_valid_txt(&update.txt);
        let _ = is_valid_key(&update.subdomain);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(user) = canonical_user(text) {
            assert_eq!(user.len(), 36);
            assert_eq!(canonical_user(&user).as_deref(), Some(user.as_str()));
        }
        if is_valid_key(text) {
            assert_eq!(text.len(), 40);
        }
        let _ = parse_cidr(text);
    }
});
