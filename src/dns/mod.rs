//! The authoritative DNS responder: wire format, the prepared zone, the pure answer
//! function, and the UDP/TCP servers around it.

pub mod answer;
pub mod metrics;
pub mod rrl;
pub mod server;
pub mod zone;

pub use answer::{Answered, Transport, answer};
pub use zone::{Zone, ZoneConfig, ZoneError};

#[cfg(test)]
mod tests;
