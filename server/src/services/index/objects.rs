//! The manifests the index keeps, by content id (`PUT|GET
//! /v1/index/objects`): not a blob store, the bytes it resolves to.
//!
//! One store per node (content-addressed: any shard may read or write any
//! cid): an LMDB environment in `data_dir/index-objects`, its map the
//! `index.objects_bytes_max` bound, each write its own transaction (synced
//! before the client hears of it); in amnesia, a map in RAM with the same
//! bound, zeroized when the node stops. Every call blocks, so shards make
//! them on the workers' normal lane. Every read hashes the bytes again: a
//! stored object that no longer matches its cid is dropped and reported
//! as corrupt, never served.

use anyhow::Context as _;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use ron_proto::index::Cid;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use zeroize::Zeroize as _;

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Found(Vec<u8>),
    Missing,
    /// Stored bytes that do not hash to their cid (now dropped).
    Corrupt,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the object store is full (index.objects_bytes_max)")]
    Full,
    #[error("the object store failed: {0}")]
    Failed(String),
}

pub enum ObjectStore {
    Disk { env: Env, objects: Database<Bytes, Bytes> },
    Memory { objects: Mutex<Memory>, bytes_max: u64 },
}

#[derive(Default)]
pub struct Memory {
    objects: HashMap<Cid, Vec<u8>>,
    bytes: u64,
}

impl ObjectStore {
    /// The store in `dir`, with a map of `bytes_max`.
    pub fn open(dir: &Path, bytes_max: u64) -> anyhow::Result<ObjectStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(bytes_max as usize).max_dbs(1);
        // SAFETY: NO_READ_AHEAD is a safe flag (reads are random).
        unsafe { options.flags(heed::EnvFlags::NO_READ_AHEAD) };
        // SAFETY: the environment is opened once per process (the data
        // directory's LOCK keeps other nodes out) and its files are changed
        // only through it.
        let env = unsafe { options.open(dir) }
            .with_context(|| format!("opening the index objects in {}", dir.display()))?;
        let mut txn = env.write_txn()?;
        let objects = env.create_database(&mut txn, Some("objects"))?;
        txn.commit()?;
        Ok(ObjectStore::Disk { env, objects })
    }

    /// A store in RAM (amnesia).
    pub fn memory(bytes_max: u64) -> ObjectStore {
        ObjectStore::Memory { objects: Mutex::new(Memory::default()), bytes_max }
    }

    /// Keeps `bytes` under their cid (computed by the caller); a cid kept
    /// already is left as it is.
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<(), PutError> {
        debug_assert_eq!(Cid::of(bytes), *cid);
        match self {
            ObjectStore::Disk { env, objects } => {
                let failed = |e: heed::Error| match e {
                    heed::Error::Mdb(heed::MdbError::MapFull) => PutError::Full,
                    other => PutError::Failed(other.to_string()),
                };
                let mut txn = env.write_txn().map_err(failed)?;
                if objects.get(&txn, &cid.0).map_err(failed)?.is_some() {
                    return Ok(());
                }
                objects.put(&mut txn, &cid.0, bytes).map_err(failed)?;
                txn.commit().map_err(failed)
            }
            ObjectStore::Memory { objects, bytes_max } => {
                let mut memory = objects.lock().expect("not poisoned");
                if memory.objects.contains_key(cid) {
                    return Ok(());
                }
                if memory.bytes + bytes.len() as u64 > *bytes_max {
                    return Err(PutError::Full);
                }
                memory.bytes += bytes.len() as u64;
                memory.objects.insert(*cid, bytes.to_vec());
                Ok(())
            }
        }
    }

    /// The bytes of `cid`, checked against it.
    pub fn get(&self, cid: &Cid) -> Result<Read, String> {
        let found = match self {
            ObjectStore::Disk { env, objects } => {
                let txn = env.read_txn().map_err(|e| e.to_string())?;
                objects.get(&txn, &cid.0).map_err(|e| e.to_string())?.map(<[u8]>::to_vec)
            }
            ObjectStore::Memory { objects, .. } => {
                objects.lock().expect("not poisoned").objects.get(cid).cloned()
            }
        };
        let Some(bytes) = found else { return Ok(Read::Missing) };
        if Cid::of(&bytes) == *cid {
            return Ok(Read::Found(bytes));
        }
        tracing::error!(%cid, "a stored index object does not match its cid: dropped");
        self.delete(cid)?;
        Ok(Read::Corrupt)
    }

    fn delete(&self, cid: &Cid) -> Result<(), String> {
        match self {
            ObjectStore::Disk { env, objects } => {
                let mut txn = env.write_txn().map_err(|e| e.to_string())?;
                objects.delete(&mut txn, &cid.0).map_err(|e| e.to_string())?;
                txn.commit().map_err(|e| e.to_string())
            }
            ObjectStore::Memory { objects, .. } => {
                let mut memory = objects.lock().expect("not poisoned");
                if let Some(mut bytes) = memory.objects.remove(cid) {
                    memory.bytes -= bytes.len() as u64;
                    bytes.zeroize();
                }
                Ok(())
            }
        }
    }

    /// Overwrites what a RAM store holds (amnesia: nothing outlives the
    /// process, not even in freed memory).
    pub fn zeroize(&self) {
        if let ObjectStore::Memory { objects, .. } = self {
            let mut memory = objects.lock().expect("not poisoned");
            for (_, mut bytes) in memory.objects.drain() {
                bytes.zeroize();
            }
            memory.bytes = 0;
        }
    }

    /// Test hook: overwrites the stored bytes of `cid` (a disk that rots).
    #[doc(hidden)]
    pub fn corrupt(&self, cid: &Cid) {
        match self {
            ObjectStore::Disk { env, objects } => {
                let mut txn = env.write_txn().expect("write");
                let mut bytes = objects.get(&txn, &cid.0).expect("read").map(<[u8]>::to_vec);
                if let Some(bytes) = &mut bytes {
                    bytes[0] ^= 1;
                    objects.put(&mut txn, &cid.0, bytes).expect("put");
                }
                txn.commit().expect("commit");
            }
            ObjectStore::Memory { objects, .. } => {
                if let Some(bytes) = objects.lock().expect("not poisoned").objects.get_mut(cid) {
                    bytes[0] ^= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &ObjectStore) {
        let bytes = b"{\"manifest\":1}".to_vec();
        let cid = Cid::of(&bytes);
        assert_eq!(store.get(&cid).unwrap(), Read::Missing);
        store.put(&cid, &bytes).unwrap();
        store.put(&cid, &bytes).unwrap();
        assert_eq!(store.get(&cid).unwrap(), Read::Found(bytes.clone()));
        store.corrupt(&cid);
        assert_eq!(store.get(&cid).unwrap(), Read::Corrupt);
        assert_eq!(store.get(&cid).unwrap(), Read::Missing, "a corrupt object is dropped");
    }

    #[test]
    fn disk_and_memory_stores_check_every_read() {
        let dir = std::env::temp_dir().join(format!("ron-objects-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        exercise(&ObjectStore::open(&dir, 1 << 20).unwrap());
        exercise(&ObjectStore::memory(1 << 20));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_store_refuses_and_keeps_what_it_has() {
        let dir = std::env::temp_dir().join(format!("ron-objects-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for store in [ObjectStore::open(&dir, 1 << 20).unwrap(), ObjectStore::memory(1 << 20)] {
            let mut kept = Vec::new();
            let full = (0..8u8).find_map(|i| {
                let bytes = vec![i; 300 << 10];
                let cid = Cid::of(&bytes);
                match store.put(&cid, &bytes) {
                    Ok(()) => {
                        kept.push((cid, bytes));
                        None
                    }
                    Err(error) => Some(error),
                }
            });
            assert!(matches!(full, Some(PutError::Full)), "{full:?}");
            for (cid, bytes) in kept {
                assert_eq!(store.get(&cid).unwrap(), Read::Found(bytes));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
