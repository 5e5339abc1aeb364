//! The event log (DESIGN "Event sourcing and replay").
//!
//! Record `seq` is stored under the big-endian key `seq`, its value one format byte and the
//! postcard encoding of a [`LogRecord`]. Sequence numbers start at 0 and have no gaps; a reader
//! reports the first position that is missing or does not decode.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use mynet_core::{Config, Input, NodeId, Time};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::retention::Retention;

/// Format byte in front of every record.
pub const LOG_FORMAT: u8 = 1;
/// Largest record we write or read back (a received frame plus overhead).
pub const RECORD_LEN_MAX: usize = 1 << 20;
const KEYSPACE: &str = "events";
const SNAPSHOTS: &str = "snapshots";

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// The first record: everything `Node::new` needs besides the key.
    Genesis { node_id: NodeId, config: Box<Config>, rng_seed: u64, time: Time },
    /// One input, appended before the node handles it.
    Input { time: Time, input: Input },
    /// State and output hashes after every record before it was handled.
    Checkpoint { state_hash: [u8; 32], output_hash: [u8; 32], outputs_total: u64 },
}

/// A stored snapshot: the node's state after every record before `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// When it was taken (the time of the last input it covers).
    pub taken_at: Time,
    /// Bytes appended to the log from genesis up to the snapshot (for retention by size).
    pub log_bytes: u64,
    /// `Node::snapshot` bytes.
    pub node: Vec<u8>,
}

/// A storage failure.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("event log {path}: {message}")]
    Backend { path: PathBuf, message: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A log whose contents are not what a node wrote.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    #[error("event log record {seq}: cannot decode: {reason}")]
    Undecodable { seq: u64, reason: String },
    #[error("event log is truncated or has a hole: expected record {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("event log record {seq}: key is {len} bytes, expected 8")]
    BadKey { seq: u64, len: usize },
    #[error("event log is empty: no genesis record")]
    Empty,
    #[error("event log record {0} should be a genesis record, or a snapshot should cover it")]
    NoGenesis(u64),
    #[error("snapshot at record {seq} cannot be used: {reason}")]
    BadSnapshot { seq: u64, reason: String },
}

/// Encodes one record.
pub fn encode_record(record: &LogRecord) -> Vec<u8> {
    let out = vec![LOG_FORMAT];
    postcard::to_extend(record, out).expect("postcard encoding of a log record cannot fail")
}

/// Encodes `LogRecord::Input { time, input }` without cloning the input.
pub fn encode_input_record(time: &Time, input: &Input) -> Vec<u8> {
    // Mirrors `LogRecord`'s first two variants, so the bytes are identical.
    #[derive(Serialize)]
    enum Ref<'a> {
        _Genesis,
        Input { time: &'a Time, input: &'a Input },
    }
    postcard::to_extend(&Ref::Input { time, input }, vec![LOG_FORMAT])
        .expect("postcard encoding of a log record cannot fail")
}

/// Decodes record `seq`.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<LogRecord, LogError> {
    let undecodable = |reason: String| LogError::Undecodable { seq, reason };
    if bytes.len() > RECORD_LEN_MAX {
        return Err(undecodable(format!("{} bytes, more than the maximum {RECORD_LEN_MAX}", bytes.len())));
    }
    let (&format, body) = bytes.split_first().ok_or_else(|| undecodable("empty record".into()))?;
    if format != LOG_FORMAT {
        return Err(undecodable(format!("unknown format byte {format}")));
    }
    let (record, rest) =
        postcard::take_from_bytes::<LogRecord>(body).map_err(|e| undecodable(format!("{e} (truncated or corrupt)")))?;
    if !rest.is_empty() {
        return Err(undecodable(format!("{} trailing bytes", rest.len())));
    }
    Ok(record)
}

/// Raw `(seq, bytes)` records in order, as a log's `scan` yields them.
pub type RawRecords<'a> = Box<dyn Iterator<Item = Result<(u64, Cow<'a, [u8]>), StorageError>> + 'a>;

/// An append-only log of encoded records, with snapshots that let its head be cut.
pub trait EventLog {
    /// Appends one encoded record and returns its sequence number. Durable only after `sync`.
    fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), StorageError>;
    /// The sequence number the next append gets.
    fn next_seq(&self) -> u64;
    /// The oldest sequence number still stored (records before it were cut).
    fn first_seq(&self) -> u64;
    /// Raw records from `from` on, in order.
    fn scan(&self, from: u64) -> RawRecords<'_>;
    /// Stores a snapshot of the state after every record before `seq`.
    fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError>;
    /// Sequence numbers of the stored snapshots, oldest first.
    fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError>;
    /// The snapshot at `seq`.
    fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError>;
    /// Cuts records and snapshots before `seq`.
    fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError>;
    /// Drops records from `seq` on (a torn tail) and snapshots after it.
    fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError>;

    /// Whether appended records are kept; a log that only counts them (a large simulation
    /// without crashes) lets writers skip encoding.
    fn keeps_records(&self) -> bool {
        true
    }

    /// Appends one record.
    fn append(&mut self, record: &LogRecord) -> Result<u64, StorageError> {
        self.append_bytes(encode_record(record))
    }

    /// Stores `entry` as the snapshot at `seq` (the next record), makes it and every record
    /// durable, then cuts what `retention` no longer keeps. The snapshot is synced before any
    /// cut, so a crash in between leaves a log that still starts at a snapshot or at genesis.
    /// A log that writes on another thread may return before the work is done; it does the
    /// work in order with its appends.
    fn commit_snapshot(&mut self, seq: u64, entry: SnapshotEntry, retention: Retention) -> Result<(), StorageError> {
        self.put_snapshot(seq, &entry)?;
        self.sync()?;
        retention.apply(self)
    }
}

fn encode_snapshot(entry: &SnapshotEntry) -> Vec<u8> {
    postcard::to_allocvec(entry).expect("postcard encoding of a snapshot cannot fail")
}

fn decode_snapshot(seq: u64, bytes: &[u8]) -> Result<SnapshotEntry, LogError> {
    postcard::from_bytes(bytes).map_err(|e| LogError::BadSnapshot { seq, reason: e.to_string() })
}

/// Decodes records in order, checking that sequence numbers have no gaps.
pub fn read_records(log: &dyn EventLog) -> impl Iterator<Item = Result<(u64, LogRecord), StorageError>> + '_ {
    read_records_from(log, log.first_seq())
}

/// Like [`read_records`], from record `from` on.
pub fn read_records_from(
    log: &dyn EventLog,
    from: u64,
) -> impl Iterator<Item = Result<(u64, LogRecord), StorageError>> + '_ {
    let mut expected = from;
    let mut failed = false;
    log.scan(from).map_while(move |raw| {
        if failed {
            return None;
        }
        let result = raw.and_then(|(seq, bytes)| {
            if seq != expected {
                return Err(LogError::Gap { expected, found: seq }.into());
            }
            expected += 1;
            Ok((seq, decode_record(seq, &bytes)?))
        });
        failed = result.is_err();
        Some(result)
    })
}

/// The in-memory log the simulator uses. It knows what was synced, so a simulated crash can
/// drop what was not and tear the last write.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    first: u64,
    records: VecDeque<Vec<u8>>,
    synced: usize,
    snapshots: BTreeMap<u64, (Vec<u8>, bool)>,
    bytes: usize,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// Records appended and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.records.len() - self.synced
    }

    /// Simulates a crash: keeps the synced records and the first `keep_unsynced` of the rest;
    /// with `tear`, the last kept unsynced record loses its second half. Unsynced snapshots
    /// are lost.
    pub fn crash(&mut self, keep_unsynced: usize, tear: bool) {
        let keep = (self.synced + keep_unsynced).min(self.records.len());
        while self.records.len() > keep {
            if let Some(record) = self.records.pop_back() {
                self.bytes -= record.len();
            }
        }
        if tear
            && keep > self.synced
            && let Some(last) = self.records.back_mut()
        {
            let half = last.len() / 2;
            self.bytes -= last.len() - half;
            last.truncate(half);
        }
        self.synced = self.records.len();
        self.snapshots.retain(|_, (_, durable)| *durable);
    }

    /// Total bytes held (records and snapshots).
    pub fn bytes(&self) -> usize {
        self.bytes + self.snapshots.values().map(|(s, _)| s.len()).sum::<usize>()
    }
}

impl EventLog for MemLog {
    fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError> {
        self.bytes += bytes.len();
        self.records.push_back(bytes);
        Ok(self.next_seq() - 1)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.synced = self.records.len();
        self.snapshots.values_mut().for_each(|(_, durable)| *durable = true);
        Ok(())
    }

    fn next_seq(&self) -> u64 {
        self.first + self.records.len() as u64
    }

    fn first_seq(&self) -> u64 {
        self.first
    }

    fn scan(&self, from: u64) -> RawRecords<'_> {
        let skip = from.saturating_sub(self.first) as usize;
        let first = self.first;
        Box::new(
            self.records
                .iter()
                .enumerate()
                .skip(skip)
                .map(move |(i, r)| Ok((first + i as u64, Cow::Borrowed(r.as_slice())))),
        )
    }

    fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError> {
        self.snapshots.insert(seq, (encode_snapshot(entry), false));
        Ok(())
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError> {
        Ok(self.snapshots.keys().copied().collect())
    }

    fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError> {
        self.snapshots.get(&seq).map(|(bytes, _)| decode_snapshot(seq, bytes).map_err(StorageError::from)).transpose()
    }

    fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError> {
        while self.first < seq {
            let Some(record) = self.records.pop_front() else { break };
            self.bytes -= record.len();
            self.first += 1;
            self.synced = self.synced.saturating_sub(1);
        }
        self.snapshots.retain(|s, _| *s >= seq);
        Ok(())
    }

    fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError> {
        while self.next_seq() > seq.max(self.first) {
            if let Some(record) = self.records.pop_back() {
                self.bytes -= record.len();
            }
        }
        self.synced = self.synced.min(self.records.len());
        self.snapshots.retain(|s, _| *s <= seq);
        Ok(())
    }
}

/// The production log: a fjall keyspace in the data dir.
pub struct FjallLog {
    path: PathBuf,
    db: fjall::Database,
    events: fjall::Keyspace,
    snapshots: fjall::Keyspace,
    first_seq: u64,
    next_seq: u64,
}

impl std::fmt::Debug for FjallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FjallLog({}, next {})", self.path.display(), self.next_seq)
    }
}

impl FjallLog {
    /// Opens (creating if needed) the log stored in directory `path`.
    pub fn open(path: &Path) -> Result<FjallLog, StorageError> {
        let backend = |e: fjall::Error| StorageError::Backend { path: path.to_path_buf(), message: e.to_string() };
        let db = fjall::Database::builder(path).open().map_err(backend)?;
        let events = db.keyspace(KEYSPACE, fjall::KeyspaceCreateOptions::default).map_err(backend)?;
        let snapshots = db.keyspace(SNAPSHOTS, fjall::KeyspaceCreateOptions::default).map_err(backend)?;
        let key_of = |guard: Option<fjall::Guard>| -> Result<Option<u64>, StorageError> {
            match guard {
                None => Ok(None),
                Some(guard) => Ok(Some(seq_of(&guard.key().map_err(backend)?)?)),
            }
        };
        let last = key_of(events.last_key_value())?;
        let first = key_of(events.first_key_value())?;
        // With every record cut, the log resumes after the newest snapshot.
        let resume = key_of(snapshots.last_key_value())?.unwrap_or(0);
        let next_seq = last.map_or(resume, |l| l + 1);
        let first_seq = first.unwrap_or(next_seq);
        Ok(FjallLog { path: path.to_path_buf(), db, events, snapshots, first_seq, next_seq })
    }

    fn backend(&self, e: fjall::Error) -> StorageError {
        StorageError::Backend { path: self.path.clone(), message: e.to_string() }
    }

    /// Copies another log's records and snapshots into this empty log, keeping their sequence
    /// numbers (a log whose head was cut starts at its first snapshot, not at 0).
    pub fn import(&mut self, source: &dyn EventLog) -> Result<(), StorageError> {
        if self.next_seq != 0 || !self.snapshot_seqs()?.is_empty() {
            return Err(StorageError::Backend { path: self.path.clone(), message: "import needs an empty log".into() });
        }
        for seq in source.snapshot_seqs()? {
            if let Some(entry) = source.snapshot(seq)? {
                self.put_snapshot(seq, &entry)?;
            }
        }
        self.first_seq = source.first_seq();
        self.next_seq = source.first_seq();
        for raw in source.scan(source.first_seq()) {
            let (seq, bytes) = raw?;
            if seq != self.next_seq {
                return Err(LogError::Gap { expected: self.next_seq, found: seq }.into());
            }
            self.append_bytes(bytes.into_owned())?;
        }
        self.sync()
    }

    /// Approximate bytes on disk.
    pub fn disk_space(&self) -> u64 {
        self.events.disk_space()
    }
}

fn seq_of(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| LogError::BadKey { seq: 0, len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

impl EventLog for FjallLog {
    fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError> {
        let seq = self.next_seq;
        self.events.insert(seq.to_be_bytes(), bytes).map_err(|e| self.backend(e))?;
        self.next_seq += 1;
        Ok(seq)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.db.persist(fjall::PersistMode::SyncAll).map_err(|e| self.backend(e))
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    fn scan(&self, from: u64) -> RawRecords<'_> {
        Box::new(self.events.range(from.to_be_bytes()..).map(move |guard| {
            let (key, value) = guard.into_inner().map_err(|e| self.backend(e))?;
            let seq = seq_of(&key)?;
            Ok((seq, Cow::Owned(value.to_vec())))
        }))
    }

    fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError> {
        self.snapshots.insert(seq.to_be_bytes(), encode_snapshot(entry)).map_err(|e| self.backend(e))
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError> {
        let mut seqs = Vec::new();
        for guard in self.snapshots.iter() {
            let key = guard.key().map_err(|e| self.backend(e))?;
            seqs.push(seq_of(&key)?);
        }
        Ok(seqs)
    }

    fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError> {
        match self.snapshots.get(seq.to_be_bytes()).map_err(|e| self.backend(e))? {
            Some(bytes) => Ok(Some(decode_snapshot(seq, &bytes)?)),
            None => Ok(None),
        }
    }

    fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError> {
        // Records first: a crash in between leaves an old snapshot too many, never a log whose
        // first record no snapshot covers.
        while self.first_seq < seq.min(self.next_seq) {
            self.events.remove(self.first_seq.to_be_bytes()).map_err(|e| self.backend(e))?;
            self.first_seq += 1;
        }
        let doomed: Vec<u64> = self.snapshot_seqs()?.into_iter().filter(|s| *s < seq).collect();
        for s in doomed {
            self.snapshots.remove(s.to_be_bytes()).map_err(|e| self.backend(e))?;
        }
        Ok(())
    }

    fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError> {
        let doomed: Vec<u64> = self.snapshot_seqs()?.into_iter().filter(|s| *s > seq).collect();
        for s in doomed {
            self.snapshots.remove(s.to_be_bytes()).map_err(|e| self.backend(e))?;
        }
        while self.next_seq > seq.max(self.first_seq) {
            self.next_seq -= 1;
            self.events.remove(self.next_seq.to_be_bytes()).map_err(|e| self.backend(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mynet_core::ConnId;

    fn records() -> Vec<LogRecord> {
        vec![
            LogRecord::Genesis { node_id: NodeId([1; 32]), config: Box::default(), rng_seed: 9, time: Time::new(1, 2) },
            LogRecord::Input {
                time: Time::new(5, 6),
                input: Input::Received { conn: ConnId(3), bytes: vec![1, 2, 3] },
            },
            LogRecord::Checkpoint { state_hash: [7; 32], output_hash: [8; 32], outputs_total: 4 },
        ]
    }

    fn round_trip(log: &mut dyn EventLog) {
        for record in records() {
            log.append(&record).expect("append");
        }
        log.sync().expect("sync");
        let back: Vec<LogRecord> = read_records(log).map(|r| r.expect("decodes").1).collect();
        assert_eq!(back, records());
    }

    #[test]
    fn memory_and_fjall_logs_round_trip_and_reopen() {
        round_trip(&mut MemLog::new());
        let dir = tempfile::tempdir().expect("tempdir");
        round_trip(&mut FjallLog::open(dir.path()).expect("open"));
        let mut reopened = FjallLog::open(dir.path()).expect("reopen");
        assert_eq!(reopened.next_seq(), 3);
        assert_eq!(read_records(&reopened).count(), 3);
        let entry = SnapshotEntry { taken_at: Time::new(1, 1), log_bytes: 10, node: vec![1, 2, 3] };
        reopened.put_snapshot(2, &entry).expect("snapshot");
        reopened.truncate_before(2).expect("cut");
        reopened.sync().expect("sync");
        drop(reopened);
        let cut = FjallLog::open(dir.path()).expect("reopen after cut");
        assert_eq!((cut.first_seq(), cut.next_seq()), (2, 3));
        assert_eq!(cut.snapshot(2).expect("read"), Some(entry));
        assert_eq!(read_records(&cut).count(), 1);
    }

    #[test]
    fn borrowed_input_encoding_matches_the_owned_one() {
        let (time, input) = (Time::new(5, 6), Input::Received { conn: ConnId(3), bytes: vec![1, 2, 3] });
        assert_eq!(encode_input_record(&time, &input), encode_record(&LogRecord::Input { time, input }));
    }

    #[test]
    fn crash_drops_unsynced_records() {
        let mut log = MemLog::new();
        let all = records();
        log.append(&all[0]).expect("append");
        log.sync().expect("sync");
        log.append(&all[1]).expect("append");
        log.append(&all[2]).expect("append");
        log.crash(1, false);
        assert_eq!(log.next_seq(), 2);
    }

    #[test]
    fn corrupt_and_truncated_records_name_their_position() {
        let mut bytes = encode_record(&records()[1]);
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(decode_record(17, &bytes), Err(LogError::Undecodable { seq: 17, .. })));
        assert!(matches!(decode_record(3, &[9, 0]), Err(LogError::Undecodable { seq: 3, .. })));
        assert!(matches!(decode_record(4, &[]), Err(LogError::Undecodable { seq: 4, .. })));
    }
}
