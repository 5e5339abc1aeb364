//! Retention: which old log segments a new snapshot lets the log cut (DESIGN "Event sourcing
//! and replay": retention is bounded by size and age).

use mynet_core::Time;

use crate::log::{EventLog, StorageError};

/// The limits of the retained log and the facts to judge them, as of one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The time of the snapshot; segments are aged by wall clock.
    pub now: Time,
    /// Bytes appended to the log from genesis up to the snapshot.
    pub log_bytes: u64,
    /// `log_retain_bytes`.
    pub max_bytes: u64,
    /// `log_retain_ms`.
    pub max_age_ms: u64,
}

impl Retention {
    /// Cuts the oldest log segments (each ends at a snapshot) while the retained log is larger
    /// than `max_bytes` or the segment ended longer than `max_age_ms` ago. The newest snapshot
    /// and everything after it always stay.
    pub fn apply<L: EventLog + ?Sized>(&self, log: &mut L) -> Result<(), StorageError> {
        for seq in log.snapshot_seqs()? {
            if seq <= log.first_seq() {
                continue;
            }
            let Some(entry) = log.snapshot(seq)? else { continue };
            let retained_bytes = self.log_bytes.saturating_sub(bytes_at_start(log)?);
            let segment_expired = self.now.wall_ms.saturating_sub(entry.taken_at.wall_ms) > self.max_age_ms;
            if retained_bytes <= self.max_bytes && !segment_expired {
                break;
            }
            log.truncate_before(seq)?;
        }
        Ok(())
    }
}

/// Log bytes appended before the first retained record.
fn bytes_at_start<L: EventLog + ?Sized>(log: &L) -> Result<u64, StorageError> {
    match log.first_seq() {
        0 => Ok(0),
        first => Ok(log.snapshot(first)?.map_or(0, |e| e.log_bytes)),
    }
}
