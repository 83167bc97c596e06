//! Structured logs: one line per event, `key=value` fields, level from `RON_LOG`.

/// Installs the subscriber. `RON_LOG` takes `tracing` filter syntax
/// (`info`, `debug`, `ron_server=trace`); the default is `info`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
