//! The acme-dns compatible HTTP API (`/register`, `/update`, `/health`), so clients that
//! speak acme-dns (lego, Traefik, cert-manager's `acmeDNS` solver, acme.sh, the certbot
//! hook, Caddy) work unchanged. `protocol` is the wire format; the server role that
//! serves it on AcmeDnsAccounts is built on it.

pub mod protocol;
pub mod server;

#[cfg(test)]
mod tests;
