//! Logging set-up: human-readable text on a terminal, JSON lines otherwise (in a
//! container), filtered by `RUST_LOG` with a default of `info`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::io::stderr().is_terminal() {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    }
}
