//! The part of the configuration a running node takes again on SIGHUP:
//! rates and queue caps. The node reads its file (and environment) again,
//! checks it as at start, applies the reloadable fields here — every shard
//! reads them on each decision — and logs what changed and what would
//! need a restart. A file that does not load changes nothing.

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

    /// Takes the reloadable fields of `new`; returns what changed
    /// (`name: old -> new`) and whether `new` differs from `running` in
    /// anything else (which needs a restart, and is not applied).
    pub fn apply(&self, running: &Config, new: &Config) -> (Vec<String>, bool) {
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
        let restart_needed = serde_json::to_value(&rest).ok() != serde_json::to_value(running).ok();
        (changed, restart_needed)
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
        let (changed, restart) = reloadable.apply(&running, &new);
        assert_eq!(
            changed,
            ["limits.tenant_rps_max: 0 -> 50", "rewarder.work_queue_max: 4096 -> 7"]
        );
        assert!(!restart);
        assert_eq!(Reloadable::get(&reloadable.rewarder_work_queue_max), 7);
        new.ledger.queue_capacity += 1;
        let (changed, restart) = reloadable.apply(&running, &new);
        assert!(changed.is_empty() && restart);
    }
}
