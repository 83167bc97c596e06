//! Signed ML-DSA batches on disk, so that a third party can fetch a batch
//! after a restart (`GET /v1/passport/pq/{shard}.{batch}`).
//!
//! Each shard appends its signed batches, from the worker that signed them,
//! to a segment file of its own, `data_dir/passport/pq/<shard>-<ms>.pqb`
//! (a new one per start, and past `PQ_SEGMENT_BYTES`). A process crash
//! loses nothing (the kernel has every append); for a power loss, a segment
//! is synced by the first append `PQ_SYNC_EVERY` after its last sync, when
//! rolled, and at a clean stop. A
//! segment whose newest batch is older than the longest a token lives
//! (`passport.ttl_max_s` + `clock_skew_s`) holds no batch a valid token
//! names, and is removed whenever a segment is opened (at every start and
//! every `PQ_SEGMENT_BYTES`), whichever shard wrote it. A lookup that memory
//! misses reads the shard's segments, newest first, on a worker.
//!
//! A record: `RPQ1` | payload length u32 | payload | BLAKE3 of the payload,
//! first 16 bytes. Payload: kid u32 | batch u64 | root [32] | signature
//! length u32 | signature | leaves u32 | leaves × [32] (little-endian). A
//! torn last record (a crash while writing) ends the segment's scan.

use super::pq::SignedBatch;
use anyhow::Context as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const MAGIC: &[u8; 4] = b"RPQ1";
/// A segment is rolled past this size.
const PQ_SEGMENT_BYTES: u64 = 64 << 20;
/// Appends are synced at most this far apart.
const PQ_SYNC_EVERY: Duration = Duration::from_secs(1);
/// The largest payload a record may claim (1024 leaves and a signature,
/// with room to spare).
const PAYLOAD_BYTES_MAX: usize = 64 << 10;

/// The directory of the signed batches under `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("passport").join("pq")
}

/// One shard's segment being written.
pub struct BatchWriter {
    dir: PathBuf,
    shard: usize,
    /// How long a segment is kept after its last batch.
    keep: Duration,
    file: Option<(File, u64)>,
    synced: Instant,
}

impl BatchWriter {
    pub fn new(dir: PathBuf, shard: usize, keep: Duration) -> BatchWriter {
        BatchWriter { dir, shard, keep, file: None, synced: Instant::now() }
    }

    /// Appends `batch` to the shard's segment (a new one first if there is
    /// none or it is full).
    pub fn append(&mut self, batch: &SignedBatch) -> anyhow::Result<()> {
        if self.file.as_ref().is_some_and(|(_, len)| *len >= PQ_SEGMENT_BYTES) {
            self.roll()?;
        }
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).with_context(|| self.dir.display().to_string())?;
            self.prune();
            let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            let path = self.dir.join(format!("{}-{}.pqb", self.shard, ms.as_millis()));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.file = Some((file, 0));
        }
        let (file, len) = self.file.as_mut().expect("opened above");
        let record = encode(batch);
        if let Err(error) = file.write_all(&record) {
            // No partial record stays in front of later ones: cut it, and
            // go on in a new segment.
            let _ = file.set_len(*len);
            self.file = None;
            return Err(error.into());
        }
        *len += record.len() as u64;
        if self.synced.elapsed() >= PQ_SYNC_EVERY {
            file.sync_data()?;
            self.synced = Instant::now();
        }
        Ok(())
    }

    /// Closes the segment (synced); the next append opens a new one.
    fn roll(&mut self) -> anyhow::Result<()> {
        if let Some((file, _)) = self.file.take() {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Removes every segment (of any shard, this layout's or an earlier
    /// one's) last written longer ago than a token lives: when a segment is
    /// opened, so at every start and every `PQ_SEGMENT_BYTES`.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > self.keep);
            if old && path.extension().is_some_and(|e| e == "pqb") {
                // Another shard's writer may have removed it first.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        if let Some((file, _)) = &self.file {
            let _ = file.sync_data();
        }
    }
}

/// Shard `shard`'s segments, newest first.
fn segments(dir: &Path, shard: usize) -> Vec<PathBuf> {
    let prefix = format!("{shard}-");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(u128, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let ms = name.strip_prefix(&prefix)?.strip_suffix(".pqb")?.parse().ok()?;
            Some((ms, entry.path()))
        })
        .collect();
    found.sort_by_key(|b| std::cmp::Reverse(b.0));
    found.into_iter().map(|(_, path)| path).collect()
}

/// Shard `shard`'s batch number `batch`, if a segment holds it.
pub fn find(dir: &Path, shard: usize, batch: u64) -> Option<SignedBatch> {
    segments(dir, shard).into_iter().find_map(|path| match find_in(&path, batch) {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(segment = %path.display(), %error, "a PQ batch segment was not read");
            None
        }
    })
}

/// Shard `shard`'s batch `batch` from the segments in `dir` (none: no
/// store), read on a worker of `core`'s.
pub async fn find_later(
    core: &crate::core::Core,
    dir: Option<PathBuf>,
    shard: usize,
    batch: u64,
) -> Option<Box<SignedBatch>> {
    let dir = dir?;
    let lane = crate::workers::Lane::Normal;
    let found = core.returns.run(&core.workers, lane, move || find(&dir, shard, batch)).ok()?;
    found.await.flatten().map(Box::new)
}

/// Scans one segment for `batch`, reading only the payloads of records
/// whose batch number matches.
fn find_in(path: &Path, batch: u64) -> anyhow::Result<Option<SignedBatch>> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 4 + 4 + 4 + 8];
    loop {
        match file.read_exact(&mut head) {
            Ok(()) => {}
            // The end, or a torn last record.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(&head[..4] == MAGIC, "not a batch record");
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        anyhow::ensure!((12..=PAYLOAD_BYTES_MAX).contains(&len), "a record's length");
        let number = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        if number != batch {
            file.seek(SeekFrom::Current(len as i64 - 12 + 16))?;
            continue;
        }
        let mut rest = vec![0u8; len - 12 + 16];
        if file.read_exact(&mut rest).is_err() {
            return Ok(None);
        }
        let mut payload = head[8..].to_vec();
        payload.extend_from_slice(&rest[..len - 12]);
        anyhow::ensure!(blake3::hash(&payload).as_bytes()[..16] == rest[len - 12..], "checksum");
        return decode(&payload).map(Some);
    }
}

fn encode(batch: &SignedBatch) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64 + batch.signature.len() + 32 * batch.leaves.len());
    payload.extend_from_slice(&batch.kid.to_le_bytes());
    payload.extend_from_slice(&batch.batch.to_le_bytes());
    payload.extend_from_slice(&batch.root);
    payload.extend_from_slice(&(batch.signature.len() as u32).to_le_bytes());
    payload.extend_from_slice(&batch.signature);
    payload.extend_from_slice(&(batch.leaves.len() as u32).to_le_bytes());
    for leaf in &batch.leaves {
        payload.extend_from_slice(leaf);
    }
    assert!(payload.len() <= PAYLOAD_BYTES_MAX, "a batch fits a record");
    let mut record = Vec::with_capacity(8 + payload.len() + 16);
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&payload);
    record.extend_from_slice(&blake3::hash(&payload).as_bytes()[..16]);
    record
}

fn decode(payload: &[u8]) -> anyhow::Result<SignedBatch> {
    let mut at = 0;
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let bytes = payload.get(at..at + n).context("a short batch record")?;
        at += n;
        Ok(bytes)
    };
    let kid = u32::from_le_bytes(take(4)?.try_into()?);
    let batch = u64::from_le_bytes(take(8)?.try_into()?);
    let root = take(32)?.try_into()?;
    let signature_len = u32::from_le_bytes(take(4)?.try_into()?) as usize;
    let signature = take(signature_len)?.to_vec();
    let count = u32::from_le_bytes(take(4)?.try_into()?) as usize;
    let leaves = take(count.checked_mul(32).context("leaves")?)?
        .chunks_exact(32)
        .map(|leaf| leaf.try_into().expect("32 bytes"))
        .collect();
    anyhow::ensure!(at == payload.len(), "bytes after a batch record");
    Ok(SignedBatch { kid, batch, leaves, root, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(number: u64, leaves: usize) -> SignedBatch {
        SignedBatch {
            kid: 3,
            batch: number,
            leaves: (0..leaves).map(|i| [i as u8; 32]).collect(),
            root: [number as u8; 32],
            signature: vec![7; 3309],
        }
    }

    #[test]
    fn batches_are_found_after_the_writer_is_gone_and_torn_tails_end_a_scan() {
        let dir = std::env::temp_dir().join(format!("ron-pq-store-{}", std::process::id()));
        let mut writer = BatchWriter::new(dir.clone(), 2, Duration::from_secs(3600));
        for number in [10, 11, 12] {
            writer.append(&batch(number, number as usize)).unwrap();
        }
        drop(writer);
        let found = find(&dir, 2, 11).unwrap();
        assert_eq!((found.batch, found.leaves.len(), found.root), (11, 11, [11; 32]));
        assert_eq!(found.signature.len(), 3309);
        assert!(find(&dir, 2, 13).is_none() && find(&dir, 1, 11).is_none());
        // A torn last record: the ones before it are still found.
        let segment = segments(&dir, 2).remove(0);
        let bytes = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &bytes[..bytes.len() - 40]).unwrap();
        assert!(find(&dir, 2, 12).is_none());
        assert_eq!(find(&dir, 2, 10).unwrap().batch, 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
