//! The log on disk (SPEC §4.1): segment files under
//! `data_dir/log/`, named by the sequence number of their first entry, each
//! preallocated to `ledger.segment_bytes` and filled with records
//! (`ron_proto::log`) at 4 KiB boundaries.
//!
//! Recovery runs once at start, before any executor, with plain blocking
//! reads, over the records after a starting point (the oldest of the log
//! index's checkpoint and the views; `crate::node::recover`): each one's
//! checksum and the root chain are verified, and the log's state (tree,
//! roots, unique keys, idempotency marks: `super::index`) is brought up to
//! the log's end. A torn or zero-filled **last** record was never
//! acknowledged (acknowledgement waits for its sync), so it is zeroed on disk
//! and logged. An invalid record with a valid one after it is corruption: the
//! node starts in safe mode with an error naming segment and offset. The
//! same scan over the whole log, keeping only the current root
//! (`LogState::checking`), is `ron-node verify-log` and the background scan
//! after every start.
//!
//! Appending runs on the committer executor through its own io_uring
//! (`super::disk_ring`), with O_DIRECT and aligned buffers.

use super::disk_ring::{AlignedBuffer, BUFFER_ALIGN, DiskRing};
use super::index::{Checkpoint, Index, RecordAt, RootAt, TreeNodes};
use ron_proto::log::{self, RecordHeader, RecordRead};
use ron_proto::merkle::{self, Hash};
use ron_shards::accumulator::{Accumulator, NoNodes, Nodes};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SEGMENT_SUFFIX: &str = ".seg";

/// One published root: the tree over the first `seq` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootItem {
    pub seq: u64,
    pub root: Hash,
    pub committed_ms: u64,
}

/// A unique or idempotency key: 16 bytes of a BLAKE3 hash.
pub type IdKey = [u8; 16];

/// The key of an id (16 bytes of its BLAKE3 hash).
pub fn id_key(id: &str) -> IdKey {
    let hash = blake3::hash(id.as_bytes());
    hash.as_bytes()[..16].try_into().expect("16 bytes")
}

/// What the log holds: the tree, the roots of every batch, every unique key
/// ever committed (entry ids), and what each idempotency key committed —
/// on disk up to the index's checkpoint (`super::index`), in memory after.
#[derive(Default)]
pub struct LogState<N = TreeNodes> {
    pub accumulator: Accumulator<N>,
    pub index: Index,
    /// What the index on disk reached at start.
    pub checkpoint: Checkpoint,
}

impl LogState<NoNodes> {
    /// A state that checks the log and keeps only its current root and
    /// length (`verify-log`, the background scan): memory does not grow
    /// with the log.
    pub fn checking() -> LogState<NoNodes> {
        LogState {
            accumulator: Accumulator::open(NoNodes::default(), 0),
            index: Index::keeping_nothing(),
            checkpoint: Checkpoint::default(),
        }
    }
}

/// Where one append's items went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub seq_start: u64,
    pub seq_end: u64,
    pub root: Hash,
}

/// How far a scan has read: the next seq and the root before it.
struct Cursor {
    next_seq: u64,
    root: Hash,
}

impl<N: Nodes> LogState<N> {
    pub fn next_seq(&self) -> u64 {
        self.accumulator.len() + 1
    }

    pub fn root(&self) -> Hash {
        self.accumulator.root()
    }

    /// Applies a record read back from disk at `at`; an error says why it
    /// does not continue the chain. A record the state already holds (up to
    /// the index's checkpoint) is only checked and visited.
    fn apply(
        &mut self,
        cursor: &mut Cursor,
        header: &RecordHeader,
        body: &[u8],
        reader: &mut dyn LogReader,
        at: RecordAt,
    ) -> Result<(), String> {
        if header.first_seq != cursor.next_seq {
            return Err(format!(
                "sequence gap: record starts at {}, expected {}",
                header.first_seq, cursor.next_seq
            ));
        }
        if header.previous_root != cursor.root {
            return Err("previous root does not match the chain".to_owned());
        }
        let known = header.last_seq() <= self.accumulator.len();
        if !known && header.first_seq != self.next_seq() {
            return Err(format!(
                "the record of seqs {}..={} straddles the index's checkpoint at {}",
                header.first_seq,
                header.last_seq(),
                self.accumulator.len()
            ));
        }
        let (body, marks) =
            log::split_body(body, header.count).map_err(|e| format!("record body: {e}"))?;
        // Every item is read and checked before the tree takes any: a
        // record that fails leaves the tree as it was.
        let mut items = Vec::with_capacity(header.count as usize);
        for encoded in log::body_entries(body) {
            let encoded = encoded.map_err(|e| format!("item framing: {e}"))?;
            reader.check(encoded).map_err(|e| format!("item: {e}"))?;
            items.push(encoded);
        }
        if items.len() != header.count as usize {
            return Err("item count does not match the items".to_owned());
        }
        if known {
            if header.last_seq() == self.accumulator.len() && header.new_root != self.root() {
                return Err("the record's root is not the log index's at its seq".to_owned());
            }
            // The index's ids may stop before its tree.
            if header.last_seq() > self.checkpoint.ids_seq {
                self.index.add_ids(items.iter().filter_map(|item| reader.unique_key(item)));
            }
        } else {
            let before = self.accumulator.frontier();
            for encoded in &items {
                self.accumulator.push(merkle::leaf_hash(encoded));
            }
            if self.root() != header.new_root {
                self.accumulator.rollback(before);
                return Err("the new root does not match the items".to_owned());
            }
            self.index.add_ids(items.iter().filter_map(|item| reader.unique_key(item)));
            for mark in marks {
                let seq_start = header.first_seq + u64::from(mark.first);
                let seq_end = seq_start + u64::from(mark.count) - 1;
                self.index.add_idem(mark.key, Placed { seq_start, seq_end, root: header.new_root });
            }
            let root = RootItem {
                seq: header.last_seq(),
                root: header.new_root,
                committed_ms: header.committed_ms,
            };
            self.index.add_root(RootAt { root, at });
        }
        for (seq, item) in (header.first_seq..).zip(items) {
            reader.visit(seq, &header.new_root, item);
        }
        *cursor = Cursor { next_seq: header.last_seq() + 1, root: header.new_root };
        Ok(())
    }
}

/// Where the next record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub path: PathBuf,
    pub offset: u64,
}

pub struct Recovered<N = TreeNodes> {
    pub state: LogState<N>,
    /// `None` when the log is empty.
    pub tail: Option<Tail>,
    /// What was truncated, for the log.
    pub truncated: Option<String>,
    /// Why the node must start in safe mode.
    pub corruption: Option<String>,
    pub records: u64,
    pub took: Duration,
}

impl Recovered {
    /// The state of a node that keeps nothing on disk.
    pub fn empty() -> Recovered {
        Recovered {
            state: LogState::default(),
            tail: None,
            truncated: None,
            corruption: None,
            records: 0,
            took: Duration::ZERO,
        }
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segments of `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if path.to_str().is_some_and(|p| p.ends_with(SEGMENT_SUFFIX)) {
                    paths.push(path);
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    paths.sort();
    Ok(paths)
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut bytes[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Reads the record at `offset`: its bytes (header, body) when the header
/// looks like one, else just the header's bytes.
fn read_record_bytes(file: &std::fs::File, offset: u64) -> io::Result<Vec<u8>> {
    let header = read_at(file, offset, log::RECORD_HEADER_BYTES)?;
    match log::record_len(&header) {
        Some(len) => read_at(file, offset, len),
        None => Ok(header),
    }
}

/// The first record boundary at or after `from` in `path` where a valid
/// record starts.
fn valid_record_from(path: &Path, from: u64) -> io::Result<Option<u64>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut offset = from;
    while offset < len {
        let bytes = read_record_bytes(&file, offset)?;
        if matches!(log::read_record(&bytes), RecordRead::Record(..)) {
            return Ok(Some(offset));
        }
        offset += log::RECORD_ALIGN_BYTES as u64;
    }
    Ok(None)
}

/// What recovery asks of the services whose items the log holds: the log
/// itself never looks inside an item.
pub trait LogReader {
    /// Whether `item` decodes; a record with an item that does not is
    /// corruption.
    fn check(&mut self, item: &[u8]) -> Result<(), String>;
    /// The unique key an item was appended with (an entry's id), if any.
    fn unique_key(&mut self, item: &[u8]) -> Option<IdKey>;
    /// Sees every item of the valid log with its sequence number and the
    /// root after its record, in order.
    fn visit(&mut self, seq: u64, root: &Hash, item: &[u8]);
    /// Whether to stop reading (the scan ends there, as if the log did).
    fn stopped(&self) -> bool {
        false
    }
}

/// What recovery does with a torn last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornTail {
    /// Zero it (and drop later segments) so that appending goes on there.
    Repair,
    /// Only say so (`ron-node verify-log` changes nothing).
    Report,
}

/// The segment file of the segment whose first seq is `segment`.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(segment_name(segment))
}

/// The first seq of the segment at `path` (its name).
fn segment_seq(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
}

/// The header of the valid record at `at`, if one is there.
pub fn record_at(dir: &Path, at: RecordAt) -> io::Result<Option<RecordHeader>> {
    let file = match std::fs::File::open(segment_path(dir, at.segment)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let bytes = read_record_bytes(&file, at.offset)?;
    Ok(match log::read_record(&bytes) {
        RecordRead::Record(header, _) => Some(header),
        _ => None,
    })
}

/// What a scan of the log reads.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    /// Start after this record (one the state holds, whose place the index
    /// recorded), or at the log's start.
    pub from: Option<RootAt>,
    pub torn: TornTail,
    /// Stop after the record ending here (a scan beside a running
    /// committer stops at what was durable when it began).
    pub until: u64,
}

impl Scan {
    /// The whole log.
    pub fn all(torn: TornTail) -> Scan {
        Scan { from: None, torn, until: u64::MAX }
    }
}

/// Scans the log in `dir` as `scan` says, repairs a torn tail (or reports
/// it), and brings `state` up to the log's end, handing every item it reads
/// to `reader`.
pub fn recover<N: Nodes>(
    dir: &Path,
    mut state: LogState<N>,
    scan: Scan,
    reader: &mut dyn LogReader,
) -> io::Result<Recovered<N>> {
    let Scan { from, torn, until } = scan;
    let started = Instant::now();
    if torn == TornTail::Report && !dir.exists() {
        let (tail, truncated, corruption, records) = (None, None, None, 0);
        return Ok(Recovered {
            state,
            tail,
            truncated,
            corruption,
            records,
            took: started.elapsed(),
        });
    }
    std::fs::create_dir_all(dir)?;
    let mut paths = segments(dir)?;
    let mut cursor = Cursor { next_seq: 1, root: merkle::empty_root() };
    let mut start_offset = 0;
    let mut tail = None;
    if let Some(from) = from {
        // The record ending at `from` was checked against the index; the
        // scan starts after it.
        let first = paths.iter().position(|p| segment_seq(p) == Some(from.at.segment));
        let header = record_at(dir, from.at)?;
        let (Some(first), Some(header)) = (first, header) else {
            return Err(io::Error::other(format!("no record at {:?}", from.at)));
        };
        paths.drain(..first);
        start_offset = from.at.offset + header.padded_bytes() as u64;
        cursor = Cursor { next_seq: from.root.seq + 1, root: from.root.root };
        tail = Some(Tail { path: paths[0].clone(), offset: start_offset });
    }
    let mut truncated = None;
    let mut corruption = None;
    let mut records = 0;
    'segments: for (index, path) in paths.iter().enumerate() {
        let file = std::fs::File::open(path)?;
        let segment = segment_seq(path).unwrap_or_default();
        let mut offset = if index == 0 { start_offset } else { 0 };
        loop {
            if cursor.next_seq > until || reader.stopped() {
                break 'segments;
            }
            let place = format!("segment {} offset {offset}", path.display());
            let bytes = read_record_bytes(&file, offset)?;
            let why = match log::read_record(&bytes) {
                RecordRead::Record(header, body) => {
                    let at = RecordAt { segment, offset };
                    if let Err(why) = state.apply(&mut cursor, &header, body, reader, at) {
                        corruption = Some(format!("{place}: {why}"));
                        break 'segments;
                    }
                    records += 1;
                    offset += header.padded_bytes() as u64;
                    tail = Some(Tail { path: path.clone(), offset });
                    continue;
                }
                RecordRead::End => {
                    if offset == 0 {
                        // An empty segment: the next record may go here.
                        tail = Some(Tail { path: path.clone(), offset });
                    }
                    continue 'segments;
                }
                RecordRead::Invalid(why) => why,
                RecordRead::Short => "truncated record",
            };
            // Torn (never acknowledged) if nothing valid follows it.
            let mut valid_after = valid_record_from(path, offset + log::RECORD_ALIGN_BYTES as u64)?
                .map(|at| (path.clone(), at));
            for later in &paths[index + 1..] {
                if valid_after.is_some() {
                    break;
                }
                valid_after = valid_record_from(later, 0)?.map(|at| (later.clone(), at));
            }
            if let Some((later, at)) = valid_after {
                corruption = Some(format!(
                    "{place}: {why}, and a valid record follows at segment {} offset {at}",
                    later.display()
                ));
                break 'segments;
            }
            if torn == TornTail::Report {
                truncated = Some(format!(
                    "{place}: {why} (a torn last record, never acknowledged: a start zeroes it)"
                ));
                tail = Some(Tail { path: path.clone(), offset });
                break 'segments;
            }
            let zeroed = zero_from(path, offset)?;
            for later in &paths[index + 1..] {
                std::fs::remove_file(later)?;
            }
            sync_dir(dir)?;
            truncated = Some(format!("{place}: {why} ({zeroed} bytes zeroed, never acknowledged)"));
            tail = Some(Tail { path: path.clone(), offset });
            break 'segments;
        }
    }
    if corruption.is_none() && cursor.next_seq <= state.accumulator.len() {
        corruption = Some(format!(
            "the log ends at seq {}, before the log index's checkpoint at {}",
            cursor.next_seq - 1,
            state.accumulator.len()
        ));
    }
    Ok(Recovered { state, tail, truncated, corruption, records, took: started.elapsed() })
}

/// Zeroes `path` from `offset` to its last non-zero byte, syncs, and returns
/// how many bytes were zeroed.
fn zero_from(path: &Path, offset: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut end = offset;
    let mut at = offset;
    loop {
        let chunk = read_at(&file, at, CHUNK)?;
        if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
            end = at + last as u64 + 1;
        }
        if chunk.len() < CHUNK {
            break;
        }
        at += CHUNK as u64;
    }
    let zeros = vec![0u8; CHUNK];
    let mut at = offset;
    while at < end {
        let len = ((end - at) as usize).min(CHUNK);
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    if end > offset {
        file.sync_data()?;
    }
    Ok(end - offset)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The name of the next segment while it is written with zeros, before the
/// roll that renames it (not a segment's name: recovery never reads it).
const ZEROING_NAME: &str = "next.zeroing";
/// The zeros go out a chunk at a time, with a pause after each: a log sync
/// flushes whatever the device holds, so a chunk is the most a sync carries.
const ZEROING_CHUNK_BYTES: usize = 1 << 20;
const ZEROING_PAUSE: Duration = Duration::from_millis(4);

/// The next segment being written with zeros: its file once done.
type Zeroing = std::thread::JoinHandle<io::Result<OwnedFd>>;

/// Writes the next segment full of zeros on a thread of its own and syncs
/// it, so that its blocks are written, not merely allocated. A record's
/// `fdatasync` then only flushes: in a preallocated segment, each record's
/// write converts an unwritten extent and each sync also writes the inode
/// (measured in bench/RESULTS.md).
fn zero_next_segment(dir: &Path, bytes: u64) -> io::Result<Zeroing> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(ZEROING_NAME);
    let bytes = bytes.next_multiple_of(BUFFER_ALIGN as u64);
    std::thread::Builder::new().name("log-zeroing".to_owned()).spawn(move || {
        let _ = std::fs::remove_file(&path);
        let file = std::fs::File::from(open_segment(&path, true)?);
        let mut zeros = AlignedBuffer::default();
        zeros.fill(&vec![0; ZEROING_CHUNK_BYTES]);
        let mut at = 0;
        while at < bytes {
            let len = (bytes - at).min(ZEROING_CHUNK_BYTES as u64) as usize;
            file.write_all_at(&zeros.as_slice()[..len], at)?;
            at += len as u64;
            std::thread::sleep(ZEROING_PAUSE);
        }
        file.sync_data()?;
        Ok(file.into())
    })
}

/// Appends records on the committer executor, through its own io_uring
/// (`crate::disk_ring`).
pub struct LogWriter {
    dir: PathBuf,
    file: Option<OwnedFd>,
    /// The open segment's first seq.
    segment: u64,
    offset: u64,
    segment_bytes: u64,
    fsync: bool,
    ring: DiskRing,
    buffer: AlignedBuffer,
    /// The next segment, zeroed once the open one is half full
    /// (`ledger.zero_segments`), and the segment that started it.
    zero_segments: bool,
    next: Option<Zeroing>,
    zeroing_for: u64,
}

/// How long the parts of one append took.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendTimes {
    pub write: Duration,
    pub sync: Duration,
    /// Where the record went.
    pub at: RecordAt,
}

/// Opens a segment for direct I/O where the filesystem has it (tmpfs does
/// not; there the page cache is the medium anyway).
fn open_segment(path: &Path, create: bool) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(file) => Ok(file.into()),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            if create {
                // The failed open may have created it.
                match std::fs::remove_file(path) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            Ok(open(0)?.into())
        }
        Err(error) => Err(error),
    }
}

impl LogWriter {
    pub async fn open(
        dir: &Path,
        tail: Option<Tail>,
        segment_bytes: u64,
        fsync: bool,
        zero_segments: bool,
    ) -> io::Result<LogWriter> {
        let mut writer = LogWriter {
            dir: dir.to_owned(),
            file: None,
            segment: 0,
            offset: 0,
            segment_bytes,
            fsync,
            zero_segments,
            ring: DiskRing::new()?,
            buffer: AlignedBuffer::default(),
            next: None,
            zeroing_for: 0,
        };
        // What a zeroing left when the node stopped is of no known length.
        match std::fs::remove_file(dir.join(ZEROING_NAME)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        if let Some(tail) = tail {
            writer.file = Some(open_segment(&tail.path, false)?);
            writer.segment = segment_seq(&tail.path).ok_or_else(|| {
                io::Error::other(format!("{} is not a segment's name", tail.path.display()))
            })?;
            writer.offset = tail.offset;
        }
        Ok(writer)
    }

    /// Writes one sealed record whose first entry is `first_seq` and makes it
    /// durable (unless `ledger.fsync` is off).
    pub async fn append(&mut self, record: &[u8], first_seq: u64) -> io::Result<AppendTimes> {
        assert_eq!(record.len() % log::RECORD_ALIGN_BYTES, 0);
        let len = record.len() as u64;
        if self.file.is_none() || (self.offset > 0 && self.offset + len > self.segment_bytes) {
            self.roll(first_seq, len).await?;
        }
        let fd = self.file.as_ref().expect("a segment is open").as_raw_fd();
        let at = RecordAt { segment: self.segment, offset: self.offset };
        let started = Instant::now();
        self.buffer.fill(record);
        self.ring.write_at(fd, &self.buffer, self.offset).await?;
        let write = started.elapsed();
        let synced = Instant::now();
        if self.fsync {
            self.ring.sync(fd, false).await?;
        }
        self.offset += len;
        let half_full = self.offset > self.segment_bytes / 2;
        if self.zero_segments
            && half_full
            && self.next.is_none()
            && self.zeroing_for != self.segment
        {
            self.zeroing_for = self.segment;
            match zero_next_segment(&self.dir, self.segment_bytes) {
                Ok(zeroing) => self.next = Some(zeroing),
                Err(error) => tracing::warn!("starting to zero the next log segment: {error}"),
            }
        }
        Ok(AppendTimes { write, sync: synced.elapsed(), at })
    }

    /// The next segment, if its zeroing is done (else it goes on, and this
    /// roll preallocates as before).
    fn zeroed(&mut self) -> io::Result<Option<OwnedFd>> {
        let Some(zeroing) = self.next.take_if(|zeroing| zeroing.is_finished()) else {
            return Ok(None);
        };
        match zeroing.join() {
            Ok(Ok(file)) => Ok(Some(file)),
            Ok(Err(error)) => {
                tracing::warn!("zeroing the next log segment: {error}; preallocating instead");
                Ok(None)
            }
            Err(_) => Err(io::Error::other("the log's zeroing thread panicked")),
        }
    }

    /// Starts a new segment for a record starting at `first_seq`.
    async fn roll(&mut self, first_seq: u64, len: u64) -> io::Result<()> {
        self.file.take();
        let path = self.dir.join(segment_name(first_seq));
        if len <= self.segment_bytes {
            if let Some(zeroed) = self.zeroed()? {
                // A link, not a rename: like creating a segment, it fails
                // if the name exists.
                std::fs::hard_link(self.dir.join(ZEROING_NAME), &path)?;
                std::fs::remove_file(self.dir.join(ZEROING_NAME))?;
                let dir = std::fs::File::open(&self.dir)?;
                self.ring.sync(dir.as_raw_fd(), true).await?;
                self.file = Some(zeroed);
                self.segment = first_seq;
                self.offset = 0;
                return Ok(());
            }
        }
        let file = open_segment(&path, true)?;
        self.ring.allocate(file.as_raw_fd(), self.segment_bytes.max(len)).await?;
        if self.fsync {
            self.ring.sync(file.as_raw_fd(), false).await?;
            let dir = std::fs::File::open(&self.dir)?;
            self.ring.sync(dir.as_raw_fd(), true).await?;
        }
        self.file = Some(file);
        self.segment = first_seq;
        self.offset = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Past half a segment, the next one is written with zeros on a thread;
    /// the roll renames that file into place and the records go into it; a
    /// start removes what a zeroing left.
    #[test]
    fn the_next_segment_is_zeroed_ahead_and_taken_at_the_roll() {
        let dir = std::env::temp_dir().join(format!("ron-zeroing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ZEROING_NAME), b"left by a stop").unwrap();
        let record = |byte: u8| vec![byte; log::RECORD_ALIGN_BYTES];
        let segment_bytes = 16 * log::RECORD_ALIGN_BYTES as u64;
        let in_dir = dir.clone();
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .spawn(move || async move {
                let dir = in_dir;
                let mut writer =
                    LogWriter::open(&dir, None, segment_bytes, true, true).await.unwrap();
                assert!(!dir.join(ZEROING_NAME).exists(), "the leftover is removed");
                for seq in 1..=8 {
                    writer.append(&record(1), seq).await.unwrap();
                }
                assert!(writer.next.is_none(), "half full is not past half");
                writer.append(&record(1), 9).await.unwrap();
                while !writer.next.as_ref().expect("zeroing").is_finished() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                let zeroed = std::fs::metadata(dir.join(ZEROING_NAME)).unwrap();
                assert_eq!(zeroed.len(), segment_bytes);
                for seq in 10..=17 {
                    writer.append(&record(seq as u8), seq).await.unwrap();
                }
                let second = std::fs::metadata(dir.join(segment_name(17))).unwrap();
                assert_eq!(second.ino(), zeroed.ino(), "the zeroed file became the segment");
                assert!(!dir.join(ZEROING_NAME).exists());
                assert!(writer.next.is_none());
            })
            .unwrap()
            .join()
            .unwrap();
        let second = std::fs::read(dir.join(segment_name(17))).unwrap();
        assert_eq!(&second[..log::RECORD_ALIGN_BYTES], &record(17)[..]);
        assert!(second[log::RECORD_ALIGN_BYTES..].iter().all(|&b| b == 0));
        assert_eq!(segments(&dir).unwrap().len(), 2, "the zeroing file is not a segment");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
