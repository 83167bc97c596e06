//! Emissions deferred while the ledger cannot take them (quarantine-only
//! mode): one mark per epoch, kept outside the log — the log may be what
//! is refusing writes — as an empty file named by the epoch id's hex in
//! `data_dir/rewarder-pending`, synced with its directory (a set in RAM in
//! amnesia). A mark is removed once every payout of the run is issued.

use anyhow::Context as _;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub enum Pending {
    Disk(PathBuf),
    Memory(Mutex<BTreeSet<String>>),
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<String> {
    if name.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..name.len()).step_by(2).map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Pending {
    pub fn open(dir: &Path) -> anyhow::Result<Pending> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Pending::Disk(dir.to_owned()))
    }

    pub fn memory() -> Pending {
        Pending::Memory(Mutex::new(BTreeSet::new()))
    }

    /// Marks `epoch_id`'s emission as owed (durably, before answering).
    pub fn add(&self, epoch_id: &str) -> std::io::Result<()> {
        match self {
            Pending::Disk(dir) => {
                let file = std::fs::File::create(dir.join(hex(epoch_id)))?;
                file.sync_all()?;
                sync_dir(dir)
            }
            Pending::Memory(set) => {
                set.lock().expect("not poisoned").insert(epoch_id.to_owned());
                Ok(())
            }
        }
    }

    /// The emission of `epoch_id` is done.
    pub fn remove(&self, epoch_id: &str) -> std::io::Result<()> {
        match self {
            Pending::Disk(dir) => match std::fs::remove_file(dir.join(hex(epoch_id))) {
                Ok(()) => sync_dir(dir),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(error),
            },
            Pending::Memory(set) => {
                set.lock().expect("not poisoned").remove(epoch_id);
                Ok(())
            }
        }
    }

    /// The epochs whose emission is owed.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        match self {
            Pending::Disk(dir) => {
                let mut epochs = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    let name = entry?.file_name();
                    match name.to_str().and_then(unhex) {
                        Some(epoch_id) => epochs.push(epoch_id),
                        None => tracing::warn!(?name, "a stray file among the pending emissions"),
                    }
                }
                epochs.sort();
                Ok(epochs)
            }
            Pending::Memory(set) => Ok(set.lock().expect("not poisoned").iter().cloned().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_kept_listed_and_removed() {
        let dir = std::env::temp_dir().join(format!("ron-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = Pending::open(&dir).unwrap();
        for pending in [disk, Pending::memory()] {
            pending.add("epoch-1").unwrap();
            pending.add("..").unwrap();
            pending.add("a:b.c").unwrap();
            assert_eq!(pending.list().unwrap(), ["..", "a:b.c", "epoch-1"]);
            pending.remove("..").unwrap();
            pending.remove("never").unwrap();
            assert_eq!(pending.list().unwrap(), ["a:b.c", "epoch-1"]);
        }
        // Kept across a reopen.
        assert_eq!(Pending::open(&dir).unwrap().list().unwrap(), ["a:b.c", "epoch-1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
