//! Structured logs: one line per event, `key=value` fields, on stderr. What
//! is logged is the configuration's `log` (`tracing` filter syntax; `RON_LOG`
//! sets it), and SIGHUP can change it while the node runs.

use std::sync::{Mutex, OnceLock};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;

/// Replaces the filter in force.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The filter in force (its text) and how to replace it.
static FILTER: OnceLock<(Mutex<String>, SetFilter)> = OnceLock::new();

/// Installs the subscriber with `filter` (checked by the configuration;
/// `info` if it does not parse).
pub fn init(filter: &str) {
    let parsed = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(parsed)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() {
        let set = move |new| set_with(&handle, new);
        let _ = FILTER.set((Mutex::new(filter.to_owned()), Box::new(set)));
    }
}

fn set_with<S>(handle: &Handle<EnvFilter, S>, filter: EnvFilter) -> Result<(), String> {
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Makes `filter` the one in force; returns the one it replaces, or `None`
/// when it is already in force. Fails if the text does not parse or no
/// subscriber was installed by [`init`].
pub fn set_filter(filter: &str) -> Result<Option<String>, String> {
    let (current, set) = FILTER.get().ok_or("no reloadable log filter was installed")?;
    let mut current = current.lock().expect("the filter text is only replaced whole");
    if *current == filter {
        return Ok(None);
    }
    set(EnvFilter::try_new(filter).map_err(|e| e.to_string())?)?;
    Ok(Some(std::mem::replace(&mut current, filter.to_owned())))
}
