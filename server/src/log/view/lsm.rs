//! A view's LSM tree (fjall): the tables of `Service::LSM_TABLES`, one
//! keyspace each, under `<view>/lsm/`. Each view write ingests a table's
//! changes as one sorted run, synced; one background thread merges them.

use super::{Change, ViewChanges, ViewLayout};
use crate::limits::{VIEW_LSM_CACHE_BYTES, VIEW_LSM_L0_RUNS};
use anyhow::Context as _;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The view's LSM tree: one keyspace per LSM table, under `<view>/lsm/`.
pub(super) struct Lsm {
    db: fjall::Database,
    /// By table index (`None`: an LMDB table); replaced when cleared.
    keyspaces: RwLock<Vec<Option<fjall::Keyspace>>>,
    names: Vec<String>,
}

impl Lsm {
    /// Opens the tree. Its merging thread starts here and keeps the
    /// placement and nice level of the thread that opens it (`open_on`).
    pub(super) fn open(dir: &Path, layout: &ViewLayout) -> anyhow::Result<Lsm> {
        let db = fjall::Database::builder(dir)
            .worker_threads(1)
            .cache_size(VIEW_LSM_CACHE_BYTES)
            .manual_journal_persist(true)
            .open()
            .with_context(|| format!("opening the view's LSM tree in {}", dir.display()))?;
        let mut keyspaces = Vec::with_capacity(layout.tables.len());
        for (name, in_lsm) in layout.tables.iter().zip(&layout.lsm) {
            keyspaces.push(if *in_lsm { Some(Lsm::keyspace(&db, name)?) } else { None });
        }
        Ok(Lsm { db, keyspaces: RwLock::new(keyspaces), names: layout.tables.clone() })
    }

    fn keyspace(db: &fjall::Database, name: &str) -> anyhow::Result<fjall::Keyspace> {
        // Sorted runs of random keys overlap every other run: up to
        // `VIEW_LSM_L0_RUNS` of them wait before one merge takes them all.
        // A read looks in each of them, so each run's filter and index are
        // in partitions, of which a read loads one: whole, they outgrow the
        // cache as the table grows, and a read then loads them from disk
        // (`bench/RESULTS.md`, "Receipts' txids in an LSM tree").
        let merging = fjall::compaction::Leveled::default().with_l0_threshold(VIEW_LSM_L0_RUNS);
        let partitioned = fjall::config::PinningPolicy::all(true);
        let options = || {
            fjall::KeyspaceCreateOptions::default()
                .compaction_strategy(Arc::new(merging))
                .filter_block_partitioning_policy(partitioned.clone())
                .index_block_partitioning_policy(partitioned)
                .manual_journal_persist(true)
        };
        db.keyspace(name, options).with_context(|| format!("opening the LSM table {name}"))
    }

    /// Table `table`'s keyspace, if it is an LSM table.
    pub(super) fn get(&self, table: usize) -> Option<fjall::Keyspace> {
        self.keyspaces.read().expect("not poisoned")[table].clone()
    }

    /// Writes one table's changes (in key order, one per key) as one sorted
    /// run, synced to disk.
    pub(super) fn write(
        keyspace: &fjall::Keyspace,
        changes: &ViewChanges,
        run: &[Change],
    ) -> anyhow::Result<()> {
        let mut ingestion = keyspace.start_ingestion()?;
        for change in run {
            let key = changes.key(change);
            match changes.value(change) {
                Some(value) => ingestion.write(key, value)?,
                None => ingestion.write_tombstone(key)?,
            }
        }
        ingestion.finish()?;
        Ok(())
    }

    /// Its bytes on disk. Like a read, it can wait for the writer's sync.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Empties every LSM table (a new keyspace replaces each).
    pub(super) fn clear(&self) -> anyhow::Result<()> {
        let mut keyspaces = self.keyspaces.write().expect("not poisoned");
        for (slot, name) in keyspaces.iter_mut().zip(&self.names) {
            if let Some(keyspace) = slot.take() {
                self.db.delete_keyspace(keyspace)?;
                *slot = Some(Lsm::keyspace(&self.db, name)?);
            }
        }
        Ok(())
    }
}
