//! The part of the configuration a running node takes again on SIGHUP:
//! rates, queue caps and the log filter. The node reads its file (and
//! environment) again, checks it as at start, applies the reloadable fields
//! here — every shard reads them on each decision — and logs what changed
//! and which other fields changed and need a restart. A file that does not
//! load changes nothing.

use crate::config::Config;
use std::sync::atomic::{AtomicU32, Ordering};

/// The reloadable fields, read by every shard.
#[derive(Debug)]
pub struct Reloadable {
    /// `limits.tenant_rps_max`.
    pub tenant_rps_max: AtomicU32,
    /// `rewarder.tenant_rps_max`.
    pub rewarder_tenant_rps_max: AtomicU32,
    /// `rewarder.inflight_max`.
    pub rewarder_inflight_max: AtomicU32,
    /// `rewarder.work_queue_max`.
    pub rewarder_work_queue_max: AtomicU32,
}

/// A reloadable field: its name, where it lives here, where in a config.
struct Field {
    name: &'static str,
    here: fn(&Reloadable) -> &AtomicU32,
    there: fn(&mut Config) -> &mut u32,
}

const FIELDS: [Field; 4] = [
    Field {
        name: "limits.tenant_rps_max",
        here: |r| &r.tenant_rps_max,
        there: |c| &mut c.limits.tenant_rps_max,
    },
    Field {
        name: "rewarder.tenant_rps_max",
        here: |r| &r.rewarder_tenant_rps_max,
        there: |c| &mut c.rewarder.tenant_rps_max,
    },
    Field {
        name: "rewarder.inflight_max",
        here: |r| &r.rewarder_inflight_max,
        there: |c| &mut c.rewarder.inflight_max,
    },
    Field {
        name: "rewarder.work_queue_max",
        here: |r| &r.rewarder_work_queue_max,
        there: |c| &mut c.rewarder.work_queue_max,
    },
];

impl Reloadable {
    pub fn of(config: &Config) -> Reloadable {
        let reloadable = Reloadable {
            tenant_rps_max: AtomicU32::new(0),
            rewarder_tenant_rps_max: AtomicU32::new(0),
            rewarder_inflight_max: AtomicU32::new(0),
            rewarder_work_queue_max: AtomicU32::new(0),
        };
        reloadable.apply(config, config);
        reloadable
    }

    pub fn get(field: &AtomicU32) -> u32 {
        field.load(Ordering::Relaxed)
    }

    /// Takes the reloadable fields of `new` (the log filter too, when a
    /// subscriber of `crate::logging` is installed); returns what changed
    /// (`name: old -> new`) and the fields where `new` differs from
    /// `running` otherwise (they need a restart, and are not applied).
    pub fn apply(&self, running: &Config, new: &Config) -> Reloaded {
        let mut changed = Vec::new();
        let (mut rest, mut running_copy) = (new.clone(), running.clone());
        for field in FIELDS {
            let value = *(field.there)(&mut rest);
            let old = (field.here)(self).swap(value, Ordering::Relaxed);
            if old != value {
                changed.push(format!("{}: {old} -> {value}", field.name));
            }
            // The rest of `new` against the rest of `running`.
            *(field.there)(&mut rest) = *(field.there)(&mut running_copy);
        }
        match crate::logging::set_filter(&new.log) {
            Ok(Some(old)) => changed.push(format!("log: {old} -> {}", new.log)),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "the log filter was not changed"),
        }
        rest.log.clone_from(&running.log);
        let mut restart = Vec::new();
        let as_json = |config: &Config| serde_json::to_value(config).expect("configs serialize");
        differing(&as_json(&rest), &as_json(running), "", &mut restart);
        Reloaded { changed, restart }
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// `name: old -> new`, for every reloadable field that changed.
    pub changed: Vec<String>,
    /// The other fields that changed (dotted names): not applied.
    pub restart: Vec<String>,
}

/// The dotted names of the fields where `a` and `b` differ.
fn differing(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (key, value) in a {
                let name = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                differing(value, b.get(key).unwrap_or(&serde_json::Value::Null), &name, out);
            }
        }
        _ if a != b => out.push(at.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloadable_fields_apply_and_others_are_reported() {
        let running = Config::default();
        let reloadable = Reloadable::of(&running);
        let mut new = running.clone();
        new.rewarder.work_queue_max = 7;
        new.limits.tenant_rps_max = 50;
        let reloaded = reloadable.apply(&running, &new);
        assert_eq!(
            reloaded.changed,
            ["limits.tenant_rps_max: 0 -> 50", "rewarder.work_queue_max: 4096 -> 7"]
        );
        assert!(reloaded.restart.is_empty());
        assert_eq!(Reloadable::get(&reloadable.rewarder_work_queue_max), 7);
        new.ledger.queue_capacity += 1;
        new.index.peers.push("/ip4/127.0.0.1/tcp/1".into());
        let reloaded = reloadable.apply(&running, &new);
        assert!(reloaded.changed.is_empty());
        assert_eq!(reloaded.restart, ["index.peers", "ledger.queue_capacity"]);
    }
}
