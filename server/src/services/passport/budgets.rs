//! Spent `budget.bytes` kept across restarts. Each shard writes the budgets
//! of the token ids it owns to `data_dir/passport/budgets-<shard>`
//! (replaced atomically, off the shard's thread) at most once every
//! `limits::BUDGETS_SAVE_EVERY` when one was spent, and at a clean stop. At
//! start every shard reads every such file and keeps the budgets of the
//! token ids it owns now, so a new shard count loses nothing; of two records
//! of one token the larger wins (spending only grows). A crash forgets at
//! most the spending of the last `BUDGETS_SAVE_EVERY`. Rate buckets
//! (`rate.rps`, tenants) refill within a second and are not kept.
//!
//! A file: `RONB1` | count u32 | count × (token id [16] | spent u64 |
//! until_s u64) | BLAKE3 of what precedes, first 16 bytes (little-endian).

use super::keys::replace_file;
use anyhow::Context as _;
use ron_shards::passport::SpentBudget;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

const MAGIC: &[u8; 5] = b"RONB1";
const ENTRY_BYTES: usize = 16 + 8 + 8;

/// Where one shard keeps its budgets, and the newest snapshot written, so
/// that an older one finishing late does not replace it.
pub struct BudgetFile {
    dir: PathBuf,
    shard: usize,
    written: Mutex<u64>,
    /// A write failed since the last `take_failed`: write them again.
    failed: AtomicBool,
}

impl BudgetFile {
    pub fn new(data_dir: &Path, shard: usize) -> BudgetFile {
        BudgetFile {
            dir: data_dir.join("passport"),
            shard,
            written: Mutex::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Writes snapshot number `generation` unless a newer one is written.
    pub fn write(&self, generation: u64, budgets: &[SpentBudget]) -> anyhow::Result<()> {
        let mut written = self.written.lock().expect("not poisoned");
        if generation <= *written {
            return Ok(());
        }
        let done = std::fs::create_dir_all(&self.dir)
            .with_context(|| self.dir.display().to_string())
            .and_then(|()| {
                replace_file(&self.dir, &format!("budgets-{}", self.shard), &encode(budgets))
            });
        match done {
            Ok(()) => *written = generation,
            Err(_) => self.failed.store(true, Ordering::Relaxed),
        }
        done
    }

    /// Whether a write failed since the last call.
    pub fn take_failed(&self) -> bool {
        self.failed.swap(false, Ordering::Relaxed)
    }

    /// The budgets of every shard's file that `owned` keeps and that still
    /// matter at `now_s`. A file that does not decode is named and skipped.
    pub fn load_all(&self, now_s: u64, owned: impl Fn(&[u8; 16]) -> bool) -> Vec<SpentBudget> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut budgets = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("budgets-") {
                continue;
            }
            match std::fs::read(entry.path()).map_err(anyhow::Error::from).and_then(|b| decode(&b)) {
                Ok(kept) => budgets.extend(
                    kept.into_iter().filter(|(id, _, until)| *until > now_s && owned(id)),
                ),
                Err(error) => {
                    tracing::warn!(file = %entry.path().display(), %error, "spent budgets not read");
                }
            }
        }
        budgets
    }
}

fn encode(budgets: &[SpentBudget]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + budgets.len() * ENTRY_BYTES + 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(budgets.len() as u32).to_le_bytes());
    for (id, spent, until) in budgets {
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(&spent.to_le_bytes());
        bytes.extend_from_slice(&until.to_le_bytes());
    }
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(&sum.as_bytes()[..16]);
    bytes
}

fn decode(bytes: &[u8]) -> anyhow::Result<Vec<SpentBudget>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().saturating_sub(16)).context("short")?;
    anyhow::ensure!(sum.len() == 16 && blake3::hash(body).as_bytes()[..16] == *sum, "checksum");
    let rest = body.strip_prefix(MAGIC.as_slice()).context("not a budgets file")?;
    let (count, entries) = rest.split_at_checked(4).context("short")?;
    let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
    anyhow::ensure!(entries.len() == count * ENTRY_BYTES, "length");
    Ok(entries
        .chunks_exact(ENTRY_BYTES)
        .map(|e| {
            let number = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
            (e[..16].try_into().expect("16 bytes"), number(16), number(24))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_refuse_damage_and_keep_the_newest_snapshot() {
        let dir = std::env::temp_dir().join(format!("ron-budgets-{}", std::process::id()));
        let file = BudgetFile::new(&dir, 1);
        let budgets = vec![([1; 16], 10, 100), ([2; 16], 20, 50)];
        file.write(2, &budgets).unwrap();
        // An older snapshot finishing later changes nothing.
        file.write(1, &[([1; 16], 1, 100)]).unwrap();
        assert_eq!(file.load_all(60, |_| true), vec![([1; 16], 10, 100)]);
        assert_eq!(file.load_all(0, |id| id[0] == 2), vec![([2; 16], 20, 50)]);
        let path = dir.join("passport/budgets-1");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(file.load_all(0, |_| true).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
