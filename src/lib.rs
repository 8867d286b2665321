//! kube-acme-dns: a Kubernetes-native ACME-DNS.
//!
//! One binary with several roles, each in its own module; `main.rs` only parses flags
//! and starts the roles that are enabled.

pub mod api;
pub mod apiserver;
pub mod compat;
pub mod controller;
pub mod dns;
pub mod health;
pub mod http;
pub mod index;
pub mod serve;
pub mod telemetry;
pub mod txt;
pub mod watch;
pub mod webhook;
pub mod wire;
