//! Event logs of simulated nodes: discarded by default, kept in memory for nodes whose log
//! will be dumped for `mynet replay`.

use mynet_storage::log::{EventLog, LogRecord, MemLog, RawRecords, StorageError};

/// A simulated node's log.
#[derive(Clone, Debug)]
pub enum SimLog {
    /// Counts records and keeps nothing (the common case at scale).
    Discard(u64),
    /// Keeps every record.
    Memory(MemLog),
}

impl EventLog for SimLog {
    fn append(&mut self, record: &LogRecord) -> Result<u64, StorageError> {
        match self {
            SimLog::Discard(next) => {
                *next += 1;
                Ok(*next - 1)
            }
            SimLog::Memory(log) => log.append(record),
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        match self {
            SimLog::Discard(_) => Ok(()),
            SimLog::Memory(log) => log.sync(),
        }
    }

    fn next_seq(&self) -> u64 {
        match self {
            SimLog::Discard(next) => *next,
            SimLog::Memory(log) => log.next_seq(),
        }
    }

    fn scan(&self, from: u64) -> RawRecords<'_> {
        match self {
            SimLog::Discard(_) => Box::new(std::iter::empty()),
            SimLog::Memory(log) => log.scan(from),
        }
    }
}
