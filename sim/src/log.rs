//! Event logs of simulated nodes: kept in memory (with crash semantics) when the run needs
//! them, for restarts after crashes or for `--dump-log`; otherwise only counted.

use mynet_storage::log::{EventLog, MemLog, RawRecords, SnapshotEntry, StorageError};

/// A simulated node's log.
#[derive(Clone, Debug)]
pub enum SimLog {
    /// Counts records and keeps nothing (large runs without crash faults).
    Discard { next: u64 },
    /// Keeps records and snapshots, and knows what was synced.
    Memory(MemLog),
}

impl SimLog {
    /// The in-memory log, if kept.
    pub fn memory(&self) -> Option<&MemLog> {
        match self {
            SimLog::Memory(log) => Some(log),
            SimLog::Discard { .. } => None,
        }
    }
}

impl EventLog for SimLog {
    fn keeps_records(&self) -> bool {
        matches!(self, SimLog::Memory(_))
    }

    fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError> {
        match self {
            SimLog::Discard { next } => {
                *next += 1;
                Ok(*next - 1)
            }
            SimLog::Memory(log) => log.append_bytes(bytes),
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(()),
            SimLog::Memory(log) => log.sync(),
        }
    }

    fn next_seq(&self) -> u64 {
        match self {
            SimLog::Discard { next } => *next,
            SimLog::Memory(log) => log.next_seq(),
        }
    }

    fn first_seq(&self) -> u64 {
        match self {
            SimLog::Discard { next } => *next,
            SimLog::Memory(log) => log.first_seq(),
        }
    }

    fn scan(&self, from: u64) -> RawRecords<'_> {
        match self {
            SimLog::Discard { .. } => Box::new(std::iter::empty()),
            SimLog::Memory(log) => log.scan(from),
        }
    }

    fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(()),
            SimLog::Memory(log) => log.put_snapshot(seq, entry),
        }
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(Vec::new()),
            SimLog::Memory(log) => log.snapshot_seqs(),
        }
    }

    fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(None),
            SimLog::Memory(log) => log.snapshot(seq),
        }
    }

    fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(()),
            SimLog::Memory(log) => log.truncate_before(seq),
        }
    }

    fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError> {
        match self {
            SimLog::Discard { .. } => Ok(()),
            SimLog::Memory(log) => log.truncate_from(seq),
        }
    }
}
