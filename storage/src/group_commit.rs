//! Group commit: an event log whose writes and fsyncs run on a storage thread.
//!
//! The thread that drives the node appends records without waiting for the disk. The storage
//! thread takes every operation queued since its last fsync, applies them in order, fsyncs
//! once for the whole group, and reports how far the log is durable. A driver holds back what
//! peers could see of input N (sends, dials, accepts, closes) until that report reaches N, so
//! an input is still durable before its effects are visible, while one fsync covers as many
//! inputs as arrived during the previous one.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::log::{EventLog, RawRecords, SnapshotEntry, StorageError};
use crate::retention::Retention;

/// Operations queued for the storage thread. A full queue makes the appending thread wait:
/// the node cannot run further ahead of the disk than this. Received frames are at most
/// 64 KiB, so the queue holds at most about 64 MiB.
pub const STORAGE_QUEUE_MAX: usize = 1024;
/// Operations applied before one fsync at most, so a durability report is never far away
/// even when appends arrive faster than the disk syncs.
pub const GROUP_OPS_MAX: usize = 4096;

/// How far the log is durable, as the storage thread reports it after every group.
#[derive(Debug)]
pub enum Durable {
    /// Every record before this sequence number is durable.
    Before(u64),
    /// A write or fsync failed: what was appended since the last report may be lost, and the
    /// storage thread has stopped.
    Failed(StorageError),
}

type ReadFn = Box<dyn FnOnce(&dyn EventLog) + Send>;

enum Op {
    Append(Vec<u8>),
    PutSnapshot(u64, SnapshotEntry),
    CommitSnapshot(u64, SnapshotEntry, Retention),
    TruncateBefore(u64),
    TruncateFrom(u64),
    /// Answered after the fsync of the group it is in.
    Sync(mpsc::Sender<Result<(), String>>),
    /// Runs after everything queued before it was applied.
    Read(ReadFn),
}

/// An [`EventLog`] whose writes go to a storage thread that owns the real log `L`.
///
/// Appends, snapshots and cuts return at once and happen in order on the thread; reads
/// (`scan`, `snapshot_seqs`, `snapshot`) and `sync` wait for the thread, so they see every
/// write queued before them. `first_seq` is what the thread last reported (cuts happen there).
pub struct GroupCommitLog<L> {
    ops: Option<SyncSender<Op>>,
    thread: Option<JoinHandle<L>>,
    next_seq: u64,
    first_seq: Arc<AtomicU64>,
    _log: PhantomData<fn() -> L>,
}

impl<L> std::fmt::Debug for GroupCommitLog<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupCommitLog(next {})", self.next_seq)
    }
}

impl<L: EventLog + Send + 'static> GroupCommitLog<L> {
    /// Moves `log` to a new storage thread. `on_durable` runs on that thread after every
    /// group (and once with the failure, if one happens).
    pub fn spawn(log: L, on_durable: impl FnMut(Durable) + Send + 'static) -> Result<GroupCommitLog<L>, StorageError> {
        let (ops, queue) = mpsc::sync_channel(STORAGE_QUEUE_MAX);
        let (next_seq, first_seq) = (log.next_seq(), Arc::new(AtomicU64::new(log.first_seq())));
        let first = first_seq.clone();
        let thread = std::thread::Builder::new()
            .name("mynet-storage".into())
            .spawn(move || run(log, &queue, &first, on_durable))
            .map_err(|e| stopped(format!("cannot start the storage thread: {e}")))?;
        Ok(GroupCommitLog { ops: Some(ops), thread: Some(thread), next_seq, first_seq, _log: PhantomData })
    }

    /// Waits until everything queued is applied and synced, stops the thread and returns the
    /// log it owned.
    pub fn close(mut self) -> Result<L, StorageError> {
        drop(self.ops.take());
        let thread = self.thread.take().ok_or_else(|| stopped("closed twice".into()))?;
        thread.join().map_err(|_| stopped("the storage thread panicked".into()))
    }
}

impl<L> GroupCommitLog<L> {
    fn send(&self, op: Op) -> Result<(), StorageError> {
        let ops = self.ops.as_ref().ok_or_else(|| stopped("closed".into()))?;
        ops.send(op).map_err(|_| stopped("the storage thread stopped after a failure".into()))
    }

    /// Runs `read` on the storage thread after every write queued before it, and waits.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn EventLog) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (reply, answer) = mpsc::channel();
        self.send(Op::Read(Box::new(move |log| {
            let _ = reply.send(read(log));
        })))?;
        answer.recv().map_err(|_| stopped("the storage thread stopped during a read".into()))?
    }
}

fn stopped(message: String) -> StorageError {
    StorageError::Backend { path: PathBuf::from("<storage thread>"), message }
}

impl<L> Drop for GroupCommitLog<L> {
    fn drop(&mut self) {
        // Closing the queue lets the thread apply and sync what is left, then end.
        drop(self.ops.take());
    }
}

/// The storage thread: group, apply, fsync, report; until the queue closes or a write fails.
fn run<L: EventLog>(mut log: L, queue: &Receiver<Op>, first_seq: &AtomicU64, mut on_durable: impl FnMut(Durable)) -> L {
    while let Ok(op) = queue.recv() {
        let mut replies = Vec::new();
        let mut wrote = false;
        let mut result = Ok(());
        for op in std::iter::once(op).chain(queue.try_iter().take(GROUP_OPS_MAX - 1)) {
            result = apply(&mut log, op, &mut replies, &mut wrote);
            // Published per operation, so a read answered later in this group sees it too.
            first_seq.store(log.first_seq(), Ordering::Release);
            if result.is_err() {
                break;
            }
        }
        if wrote {
            result = result.and_then(|()| log.sync());
        }
        let answer = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        // Reported before syncs are answered, so whoever waited on a sync sees the report.
        let failed = match result {
            Ok(()) if wrote => {
                on_durable(Durable::Before(log.next_seq()));
                false
            }
            Ok(()) => false,
            Err(err) => {
                on_durable(Durable::Failed(err));
                true
            }
        };
        for reply in replies {
            let _ = reply.send(answer.clone());
        }
        if failed {
            return log;
        }
    }
    log
}

fn apply<L: EventLog>(
    log: &mut L,
    op: Op,
    replies: &mut Vec<mpsc::Sender<Result<(), String>>>,
    wrote: &mut bool,
) -> Result<(), StorageError> {
    match op {
        Op::Read(read) => {
            read(&*log);
            return Ok(());
        }
        Op::Sync(reply) => replies.push(reply),
        Op::Append(bytes) => {
            log.append_bytes(bytes)?;
        }
        Op::PutSnapshot(seq, entry) => log.put_snapshot(seq, &entry)?,
        Op::CommitSnapshot(seq, entry, retention) => log.commit_snapshot(seq, entry, retention)?,
        Op::TruncateBefore(seq) => log.truncate_before(seq)?,
        Op::TruncateFrom(seq) => log.truncate_from(seq)?,
    }
    *wrote = true;
    Ok(())
}

impl<L> EventLog for GroupCommitLog<L> {
    fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError> {
        self.send(Op::Append(bytes))?;
        self.next_seq += 1;
        Ok(self.next_seq - 1)
    }

    /// Waits until every record appended so far is durable.
    fn sync(&mut self) -> Result<(), StorageError> {
        let (reply, answer) = mpsc::channel();
        self.send(Op::Sync(reply))?;
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(stopped(message)),
            Err(_) => Err(stopped("the storage thread stopped during a sync".into())),
        }
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn first_seq(&self) -> u64 {
        self.first_seq.load(Ordering::Acquire)
    }

    /// Copies the records out on the storage thread (for tools and tests; the live path never
    /// scans).
    fn scan(&self, from: u64) -> RawRecords<'_> {
        let records = self.read(move |log| {
            log.scan(from).map(|raw| raw.map(|(seq, bytes)| (seq, bytes.into_owned()))).collect::<Result<Vec<_>, _>>()
        });
        match records {
            Ok(records) => Box::new(records.into_iter().map(|(seq, bytes)| Ok((seq, Cow::Owned(bytes))))),
            Err(err) => Box::new(std::iter::once(Err(err))),
        }
    }

    fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError> {
        self.send(Op::PutSnapshot(seq, entry.clone()))
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError> {
        self.read(|log| log.snapshot_seqs())
    }

    fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError> {
        self.read(move |log| log.snapshot(seq))
    }

    fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError> {
        self.send(Op::TruncateBefore(seq))
    }

    fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError> {
        self.send(Op::TruncateFrom(seq))?;
        self.next_seq = self.next_seq.min(seq.max(self.first_seq()));
        Ok(())
    }

    /// Queues the snapshot, its fsync and the cuts; the thread reports durability after them.
    fn commit_snapshot(&mut self, seq: u64, entry: SnapshotEntry, retention: Retention) -> Result<(), StorageError> {
        self.send(Op::CommitSnapshot(seq, entry, retention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogRecord, MemLog, read_records};
    use mynet_core::Time;
    use std::sync::Mutex;

    fn record(i: u64) -> LogRecord {
        LogRecord::Checkpoint { state_hash: [i as u8; 32], output_hash: [0; 32], outputs_total: i }
    }

    #[test]
    fn appends_arrive_in_order_and_durability_is_reported_monotonically() {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let mut log = GroupCommitLog::spawn(MemLog::new(), move |d| {
            if let Durable::Before(seq) = d {
                seen.lock().expect("lock").push(seq);
            }
        })
        .expect("spawn");
        for i in 0..500 {
            assert_eq!(log.append(&record(i)).expect("append"), i);
        }
        log.sync().expect("sync");
        let reports = reports.lock().expect("lock").clone();
        assert!(reports.windows(2).all(|w| w[0] <= w[1]), "durability never goes back: {reports:?}");
        assert_eq!(reports.last(), Some(&500), "after sync everything is durable");
        // Reads see every write queued before them.
        assert_eq!(read_records(&log).count(), 500);
        let mem = log.close().expect("close");
        assert_eq!((mem.next_seq(), mem.unsynced()), (500, 0));
    }

    /// A log whose fsync fails, as a full or failing disk would make it.
    struct FailingSync(MemLog);

    impl EventLog for FailingSync {
        fn append_bytes(&mut self, bytes: Vec<u8>) -> Result<u64, StorageError> {
            self.0.append_bytes(bytes)
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            Err(stopped("fsync: input/output error".into()))
        }
        fn next_seq(&self) -> u64 {
            self.0.next_seq()
        }
        fn first_seq(&self) -> u64 {
            self.0.first_seq()
        }
        fn scan(&self, from: u64) -> RawRecords<'_> {
            self.0.scan(from)
        }
        fn put_snapshot(&mut self, seq: u64, entry: &SnapshotEntry) -> Result<(), StorageError> {
            self.0.put_snapshot(seq, entry)
        }
        fn snapshot_seqs(&self) -> Result<Vec<u64>, StorageError> {
            self.0.snapshot_seqs()
        }
        fn snapshot(&self, seq: u64) -> Result<Option<SnapshotEntry>, StorageError> {
            self.0.snapshot(seq)
        }
        fn truncate_before(&mut self, seq: u64) -> Result<(), StorageError> {
            self.0.truncate_before(seq)
        }
        fn truncate_from(&mut self, seq: u64) -> Result<(), StorageError> {
            self.0.truncate_from(seq)
        }
    }

    #[test]
    fn a_failed_fsync_is_reported_and_stops_the_log() {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = failures.clone();
        let mut log = GroupCommitLog::spawn(FailingSync(MemLog::new()), move |d| match d {
            Durable::Before(seq) => panic!("nothing is durable, yet {seq} was reported"),
            Durable::Failed(err) => seen.lock().expect("lock").push(err.to_string()),
        })
        .expect("spawn");
        log.append(&record(0)).expect("queued");
        assert!(log.sync().is_err(), "the sync reports the failure");
        assert_eq!(failures.lock().expect("lock").len(), 1);
        // The thread stops right after answering; appends fail from then on.
        let refused = (1..100).any(|i| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            log.append(&record(i)).is_err()
        });
        assert!(refused, "nothing more is taken after a failure");
    }

    #[test]
    fn snapshots_and_cuts_run_on_the_thread_in_order() {
        let mut log = GroupCommitLog::spawn(MemLog::new(), |_| {}).expect("spawn");
        for i in 0..10 {
            log.append(&record(i)).expect("append");
        }
        let entry = SnapshotEntry { taken_at: Time::new(5, 5), log_bytes: 100, node: vec![1, 2, 3] };
        let retention = Retention { now: Time::new(5, 5), log_bytes: 100, max_bytes: 0, max_age_ms: 1000 };
        log.commit_snapshot(10, entry.clone(), retention).expect("snapshot");
        log.append(&record(10)).expect("append");
        assert_eq!(log.snapshot(10).expect("read"), Some(entry));
        assert_eq!(log.first_seq(), 10, "retention 0 cut everything before the snapshot");
        let mem = log.close().expect("close");
        assert_eq!((mem.first_seq(), mem.next_seq(), mem.unsynced()), (10, 11, 0));
    }
}
