//! Recovery at start, before any executor: the committer's index is opened
//! at its checkpoint, every shard's view is opened and loaded into its
//! services' states, then the log after the oldest of them is read once:
//! the committer's state takes the records after its checkpoint, and each
//! item goes to its service for the shards whose view is behind it.
//!
//! The index counts only if its tree has the checkpoint's root and the
//! log's record ending there says so too; a view counts only if it was
//! written for this layout (shard, shard count, the services' tables) and
//! the log has its root at its seq. What does not count is cleared and
//! rebuilt from the log (a view ahead of the index is checked after the
//! scan, and rebuilt by a second pass, for those shards only).

use crate::config::Config;
use crate::log::index::{Checkpoint, Index, IndexStore, RootAt, TreeNodes, index_dir};
use crate::log::segments::{self, LogState, Recovered, Scan, TornTail};
use crate::log::view::{ViewMeta, ViewStore, view_dir};
use crate::service::{Registry, Replayer, States};
use crate::workers::Workers;
use anyhow::Context as _;
use ron_shards::accumulator::{Accumulator, node_count};
use std::any::Any;
use std::cell::Cell;
use std::path::Path;
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

/// Opens the committer's index and the views, and reads the log after
/// them (unless nothing is kept on disk).
pub fn recover(
    config: &Config,
    registry: &Registry,
    shared: &[Arc<dyn Any + Send + Sync>],
    shard_count: usize,
    workers: &Workers,
) -> anyhow::Result<Recovery> {
    let mut states = States::new(registry, shared, config, shard_count);
    if config.amnesia() {
        let views = (0..shard_count).map(|_| None).collect();
        return Ok(Recovery { recovered: Recovered::empty(), states, views });
    }
    let dir = config.data_dir.join("log");
    let state = open_index(&config.data_dir, &dir)?;
    let checkpoint = state.checkpoint.seq;
    let (stores, mut metas) =
        open_views(config, registry, shared, &mut states, shard_count, workers)?;
    // Views the index vouches for now; one ahead of it waits for the scan.
    for shard in 0..shard_count {
        if metas[shard].is_some_and(|m| m.applied_seq <= checkpoint && !vouched(&state, &m)) {
            tracing::warn!(shard, "a view does not match the log: rebuilding it from the log");
            stores[shard].clear()?;
            states.reset(registry, shared, config, shard);
            metas[shard] = None;
        }
    }
    // Each shard replays the log after what its view holds; the scan
    // starts after the oldest view or the index's checkpoint.
    let from: Vec<u64> = metas.iter().map(|meta| meta.map_or(0, |m| m.applied_seq)).collect();
    let oldest = from.iter().copied().min().unwrap_or(0).min(state.checkpoint.ids_seq);
    let start = (oldest > 0).then(|| state.index.root(oldest)).flatten();
    let start = start.filter(|at| anchored(&dir, at));
    let replayed: Vec<Cell<u64>> = (0..shard_count).map(|_| Cell::new(0)).collect();
    let wants = |shard: usize, seq: u64| {
        let wanted = seq > from[shard];
        replayed[shard].set(replayed[shard].get() + u64::from(wanted));
        wanted
    };
    let mut replayer = Replayer { registry, states: &mut states, wants: &wants };
    let scan = Scan { from: start, torn: TornTail::Repair, until: u64::MAX };
    let mut recovered = segments::recover(&dir, state, scan, &mut replayer)
        .with_context(|| format!("reading the log in {}", dir.display()))?;
    let stale: Vec<usize> = (0..shard_count)
        .filter(|shard| metas[*shard].is_some_and(|m| !vouched(&recovered.state, &m)))
        .collect();
    if !stale.is_empty() {
        tracing::warn!(shards = ?stale, "views do not match the log: rebuilding them from the log");
        for shard in &stale {
            stores[*shard].clear()?;
            states.reset(registry, shared, config, *shard);
            replayed[*shard].set(0);
        }
        // Only these shards, from the start: the whole log is read again,
        // and the committer's state already holds all of it.
        let wants = |shard: usize, _: u64| {
            let wanted = stale.contains(&shard);
            replayed[shard].set(replayed[shard].get() + u64::from(wanted));
            wanted
        };
        let mut replayer = Replayer { registry, states: &mut states, wants: &wants };
        let scan = Scan::all(TornTail::Repair);
        let again = segments::recover(&dir, recovered.state, scan, &mut replayer)
            .with_context(|| format!("reading the log in {}", dir.display()))?;
        recovered.state = again.state;
        // The first pass may have started after a corrupt record.
        recovered.corruption = recovered.corruption.or(again.corruption);
    }
    report(config, &recovered, oldest);
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

/// The committer's state at its index's checkpoint: the tree's nodes,
/// roots, ids and idempotency marks stay on disk. A checkpoint the log does
/// not vouch for is cleared: the index is rebuilt from the whole log.
fn open_index(data_dir: &Path, log_dir: &Path) -> anyhow::Result<LogState> {
    let store = Arc::new(IndexStore::open(&index_dir(data_dir))?);
    let empty = |store: &Arc<IndexStore>| LogState {
        accumulator: Accumulator::open(TreeNodes::new(Some(store.clone()), 0), 0),
        index: Index::new(Some(store.clone())),
        checkpoint: Checkpoint::default(),
    };
    let Some(checkpoint) = store.checkpoint()? else {
        // New, or written by a build this one cannot read.
        store.clear()?;
        return Ok(empty(&store));
    };
    if !store.has_nodes(node_count(checkpoint.seq)) {
        tracing::warn!(
            seq = checkpoint.seq,
            "the log index's tree is short: rebuilding it from the log"
        );
        store.clear()?;
        return Ok(empty(&store));
    }
    let nodes = TreeNodes::new(Some(store.clone()), node_count(checkpoint.seq));
    let accumulator = Accumulator::open(nodes, checkpoint.seq);
    let index = Index::new(Some(store.clone()));
    let last = index.root(checkpoint.seq);
    let why = match last {
        _ if accumulator.root() != checkpoint.root => Some("its tree has another root"),
        None => Some("it has no root at its checkpoint"),
        Some(at) if at.root.root != checkpoint.root => Some("its root list disagrees with it"),
        Some(at) if !anchored(log_dir, &at) => Some("the log has no such record"),
        Some(_) => None,
    };
    if let Some(why) = why {
        tracing::warn!(
            seq = checkpoint.seq,
            why,
            "the log index's checkpoint does not match the log: rebuilding it from the log"
        );
        store.clear()?;
        return Ok(empty(&store));
    }
    Ok(LogState { accumulator, index, checkpoint })
}

/// Whether the log's record at `at.at` ends at `at`'s seq with its root.
fn anchored(log_dir: &Path, at: &RootAt) -> bool {
    match segments::record_at(log_dir, at.at) {
        Ok(Some(header)) => header.last_seq() == at.root.seq && header.new_root == at.root.root,
        _ => false,
    }
}

/// Whether the log has a record ending at the view's seq with the view's
/// root.
fn vouched(state: &LogState, meta: &ViewMeta) -> bool {
    state.index.root(meta.applied_seq).is_some_and(|at| at.root.root == meta.root)
}

fn report(config: &Config, recovered: &Recovered, from: u64) {
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
        index_checkpoint = recovered.state.checkpoint.seq,
        index_ids_checkpoint = recovered.state.checkpoint.ids_seq,
        read_after = from,
        records_read = recovered.records,
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
    workers: &Workers,
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
        let dir = view_dir(&config.data_dir, shard);
        let store = Arc::new(ViewStore::open(&dir, &layout, Some(workers))?);
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
