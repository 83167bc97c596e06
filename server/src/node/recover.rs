//! Recovery at start, before any executor: every shard's view is opened and
//! loaded into its services' states, then the log is read once and each
//! item handed to its service for the shards whose view is behind it.
//!
//! A view counts only if it was written for this layout (shard, shard
//! count, the services' tables) and the log has its root at its seq; one
//! that is ahead of the log or from another log is cleared and rebuilt from
//! the log (a second pass, for those shards only).

use crate::config::Config;
use crate::log::segments::{self, Recovered};
use crate::log::view::{ViewMeta, ViewStore, view_dir};
use crate::service::{Registry, Replayer, States};
use anyhow::Context as _;
use std::any::Any;
use std::cell::Cell;
use std::sync::Arc;

/// One shard's view after recovery.
pub struct ShardViewStart {
    pub store: Arc<ViewStore>,
    /// The log seq the view reflects.
    pub seq: u64,
}

/// What recovery hands to the committer and the shards.
pub struct Recovery {
    pub recovered: Recovered,
    pub states: States,
    /// Per shard; none in amnesia mode.
    pub views: Vec<Option<ShardViewStart>>,
}

/// Reads the log back (unless nothing is kept on disk), loads each shard's
/// view and replays the log after it.
pub fn recover(
    config: &Config,
    registry: &Registry,
    shared: &[Arc<dyn Any + Send + Sync>],
    shard_count: usize,
) -> anyhow::Result<Recovery> {
    let mut states = States::new(registry, shared, config, shard_count);
    if config.amnesia() {
        let views = (0..shard_count).map(|_| None).collect();
        return Ok(Recovery { recovered: Recovered::empty(), states, views });
    }
    let (stores, metas) = open_views(config, registry, shared, &mut states, shard_count)?;
    // Each shard replays the log after what its view holds.
    let from: Vec<u64> = metas.iter().map(|meta| meta.map_or(0, |m| m.applied_seq)).collect();
    let replayed: Vec<Cell<u64>> = (0..shard_count).map(|_| Cell::new(0)).collect();
    let wants = |shard: usize, seq: u64| {
        let wanted = seq > from[shard];
        replayed[shard].set(replayed[shard].get() + u64::from(wanted));
        wanted
    };
    let dir = config.data_dir.join("log");
    let mut replayer =
        Replayer { registry, states: &mut states, wants: &wants, tableless_get_all: true };
    let recovered = segments::recover(&dir, &mut replayer, segments::TornTail::Repair)
        .with_context(|| format!("reading the log in {}", dir.display()))?;
    let stale = stale_views(&recovered, &metas);
    if !stale.is_empty() {
        tracing::warn!(shards = ?stale, "views do not match the log: rebuilding them from the log");
        for shard in &stale {
            stores[*shard].clear()?;
            states.reset(registry, shared, config, *shard);
            replayed[*shard].set(0);
        }
        // Only these shards, from the start: the whole log is read again.
        let wants = |shard: usize, _: u64| {
            let wanted = stale.contains(&shard);
            replayed[shard].set(replayed[shard].get() + u64::from(wanted));
            wanted
        };
        let mut replayer =
            Replayer { registry, states: &mut states, wants: &wants, tableless_get_all: false };
        segments::recover(&dir, &mut replayer, segments::TornTail::Repair)
            .with_context(|| format!("reading the log in {}", dir.display()))?;
    }
    report(config, &recovered);
    let views = stores
        .into_iter()
        .zip(&metas)
        .enumerate()
        .map(|(shard, (store, meta))| {
            let seq = if stale.contains(&shard) { 0 } else { meta.map_or(0, |m| m.applied_seq) };
            let items = replayed[shard].get();
            tracing::info!(
                shard,
                view_seq = seq,
                tail_entries = items,
                "shard view loaded, log after it replayed"
            );
            Some(ShardViewStart { store: Arc::new(store), seq })
        })
        .collect();
    Ok(Recovery { recovered, states, views })
}

/// Shards whose view the log does not vouch for: the log has no record
/// ending at the view's seq with the view's root.
fn stale_views(recovered: &Recovered, metas: &[Option<ViewMeta>]) -> Vec<usize> {
    let roots = &recovered.state.roots;
    (0..metas.len())
        .filter(|shard| {
            metas[*shard].is_some_and(|meta| {
                let at = roots.partition_point(|r| r.seq < meta.applied_seq);
                roots.get(at).is_none_or(|r| r.seq != meta.applied_seq || r.root != meta.root)
            })
        })
        .collect()
}

fn report(config: &Config, recovered: &Recovered) {
    if let Some(truncated) = &recovered.truncated {
        tracing::warn!(%truncated, "ledger log: removed a torn last record");
    }
    if let Some(corruption) = &recovered.corruption {
        tracing::error!(%corruption, "ledger log is corrupt: starting in safe mode");
    }
    if !config.ledger.fsync {
        tracing::warn!(
            "ledger.fsync = false: acknowledged entries are NOT durable (CPU-path measurements only)"
        );
    }
    tracing::info!(
        records = recovered.records,
        entries = recovered.state.accumulator.len(),
        took_ms = recovered.took.as_millis() as u64,
        "ledger log recovered"
    );
}

/// Opens the view of every shard and loads those written for this layout;
/// a view of another layout is cleared (rebuilt from the log), and views of
/// shards that no longer exist are removed.
fn open_views(
    config: &Config,
    registry: &Registry,
    shared: &[Arc<dyn Any + Send + Sync>],
    states: &mut States,
    shard_count: usize,
) -> anyhow::Result<(Vec<ViewStore>, Vec<Option<ViewMeta>>)> {
    for entry in std::fs::read_dir(&config.data_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(i) = name.strip_prefix("shard-").and_then(|i| i.parse::<usize>().ok()) {
            if i >= shard_count {
                tracing::info!(path = %path.display(), "removing the view of a shard that no longer exists");
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let (layout, bases) = registry.view_layout();
    let mut stores = Vec::with_capacity(shard_count);
    let mut metas = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let store = Arc::new(ViewStore::open(&view_dir(&config.data_dir, shard), &layout)?);
        let meta = match store.meta()? {
            Some(meta)
                if meta.shard as usize == shard && meta.shard_count as usize == shard_count =>
            {
                match states.load(registry, &bases, shard, &store, meta.applied_seq) {
                    Ok(()) => {
                        store.drop_mapped_pages();
                        Some(meta)
                    }
                    Err(error) => {
                        // The log has everything: what it does not vouch
                        // for is rebuilt from it.
                        let error = format!("{error:#}");
                        tracing::warn!(shard, %error, "a view does not load: rebuilding it");
                        store.clear()?;
                        states.reset(registry, shared, config, shard);
                        None
                    }
                }
            }
            Some(meta) => {
                tracing::info!(
                    shard,
                    was = meta.shard_count,
                    now = shard_count,
                    "the shard count changed: rebuilding the view from the log"
                );
                store.clear()?;
                None
            }
            None => {
                // New, or written by a build this one cannot read.
                store.clear()?;
                None
            }
        };
        stores.push(Arc::into_inner(store).expect("one owner"));
        metas.push(meta);
    }
    Ok((stores, metas))
}
