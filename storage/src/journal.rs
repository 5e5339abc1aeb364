//! A node bound to its event log: every input is appended before the node sees it, and every
//! `checkpoint_interval_events` inputs the log records the node's state and output hashes.
//! Production and the simulator drive nodes through this type; replay reads what it wrote.

use mynet_core::{Config, Identity, Input, Mono, Node, NodeId, Output, Time};
use thiserror::Error;

use crate::log::{
    EventLog, LogError, LogRecord, SnapshotEntry, StorageError, encode_input_record, encode_record, read_records_from,
};
use crate::retention::Retention;

/// Log bytes after which a snapshot is taken regardless of input count: at least this...
const SNAPSHOT_BYTES_MIN: u64 = 64 * 1024;
/// ...and at most this, or half of `log_retain_bytes` in between.
const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// A node whose inputs are journaled.
#[derive(Debug)]
pub struct Journaled<L: EventLog> {
    node: Node,
    log: L,
    since_checkpoint: u64,
    since_snapshot: u64,
    last_snapshot: Mono,
    /// `log_bytes` when the last snapshot was taken.
    snapshot_log_bytes: u64,
    /// Bytes appended from genesis on (continues across snapshots and restarts).
    log_bytes: u64,
}

/// What recovering from an existing log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read back.
    pub records: u64,
    /// Checkpoints that matched.
    pub checkpoints: u64,
    /// The snapshot recovery started from, if any.
    pub snapshot: Option<u64>,
    /// A torn last record that was dropped, if any.
    pub torn_tail: Option<u64>,
    /// The first checkpoint that did not match, if any (the build changed behaviour).
    pub divergence: Option<Divergence>,
}

/// A checkpoint whose recomputed hash differs from the recorded one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Sequence number of the checkpoint record.
    pub seq: u64,
    /// Inputs replayed before it.
    pub inputs: u64,
    /// `state` or `output`.
    pub what: &'static str,
    /// Hash recorded in the log, hex.
    pub recorded: String,
    /// Hash the replay computed, hex.
    pub replayed: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint at record {} (after {} inputs): {} hash recorded {} but replay computed {}",
            self.seq, self.inputs, self.what, self.recorded, self.replayed
        )
    }
}

/// Why a log could not be replayed.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the log belongs to node {log} but the key file is node {key}")]
    WrongKey { log: NodeId, key: NodeId },
}

impl From<LogError> for ReplayError {
    fn from(err: LogError) -> ReplayError {
        ReplayError::Storage(err.into())
    }
}

/// What a replay reproduced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read.
    pub records: u64,
    /// Inputs handled.
    pub events: u64,
    /// Checkpoints compared and matched.
    pub checkpoints: u64,
    /// Restarts found in the log.
    pub restarts: u64,
    /// Outputs the replayed node emitted.
    pub outputs: u64,
    /// The snapshot the replay started from (`None`: from genesis).
    pub from_snapshot: Option<u64>,
    /// First checkpoint that differed; `None` means every checkpoint was reproduced.
    pub divergence: Option<Divergence>,
    /// Sequence number replay stopped after (the `until` point or the last record).
    pub stopped_at: Option<u64>,
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// As early as the log allows: genesis, or the snapshot where the cut log begins.
    Earliest,
    /// The newest snapshot (what a restart uses).
    Latest,
}

/// Called for every record replayed, with the outputs it produced and the node after it.
pub type Observer<'a> = dyn FnMut(u64, &LogRecord, &[Output], &Node) + 'a;

/// Runs `log` through a node rebuilt from `start`. Stops at the first divergent checkpoint,
/// or after record `until`. Returns the node as it stands at the stop point.
pub fn replay(
    log: &dyn EventLog,
    identity: &Identity,
    start: Start,
    until: Option<u64>,
    observer: Option<&mut Observer<'_>>,
) -> Result<(ReplayReport, Option<Node>), ReplayError> {
    replay_inner(log, identity, start, until, observer, true)
}

fn replay_inner(
    log: &dyn EventLog,
    identity: &Identity,
    start: Start,
    until: Option<u64>,
    mut observer: Option<&mut Observer<'_>>,
    stop_on_divergence: bool,
) -> Result<(ReplayReport, Option<Node>), ReplayError> {
    let watching = observer.is_some();
    let mut report = ReplayReport::default();
    let (mut node, from) = starting_node(log, identity, start)?;
    report.from_snapshot = node.as_ref().map(|_| from);
    let mut outputs = Vec::new();
    for item in read_records_from(log, from) {
        let (seq, record) = item?;
        report.records += 1;
        outputs.clear();
        // Only an observer needs the record after it was handled; otherwise inputs move.
        let observed = watching.then(|| record.clone());
        match record {
            LogRecord::Genesis { node_id, config, rng_seed, time } => {
                if node_id != identity.node_id() {
                    return Err(ReplayError::WrongKey { log: node_id, key: identity.node_id() });
                }
                let mut fresh = Node::new(*config, identity.clone(), rng_seed, time);
                outputs.extend(std::iter::from_fn(|| fresh.poll_output()));
                node = Some(fresh);
            }
            LogRecord::Input { time, input } => {
                let n = node.as_mut().ok_or(LogError::NoGenesis(seq))?;
                report.restarts += u64::from(matches!(input, Input::Restart { .. }));
                n.handle(time, input);
                if watching {
                    outputs.extend(std::iter::from_fn(|| n.poll_output()));
                } else {
                    while n.poll_output().is_some() {}
                }
                report.events += 1;
            }
            LogRecord::Checkpoint { state_hash, output_hash, .. } => {
                let n = node.as_ref().ok_or(LogError::NoGenesis(seq))?;
                match compare(seq, report.events, n, &state_hash, &output_hash) {
                    None => report.checkpoints += 1,
                    Some(divergence) => {
                        report.divergence.get_or_insert(divergence);
                    }
                }
            }
        }
        if let (Some(observer), Some(n), Some(record)) = (observer.as_mut(), node.as_ref(), observed.as_ref()) {
            observer(seq, record, &outputs, n);
        }
        report.stopped_at = Some(seq);
        if (stop_on_divergence && report.divergence.is_some()) || until.is_some_and(|u| seq >= u) {
            break;
        }
    }
    if report.records == 0 && node.is_none() {
        return Err(LogError::Empty.into());
    }
    report.outputs = node.as_ref().map_or(0, Node::outputs_total);
    Ok((report, node))
}

/// The node a replay starts from and the first record to apply to it.
fn starting_node(log: &dyn EventLog, identity: &Identity, start: Start) -> Result<(Option<Node>, u64), ReplayError> {
    let first = log.first_seq();
    let seqs = log.snapshot_seqs()?;
    let chosen = match start {
        Start::Latest => seqs.iter().rev().find(|s| **s >= first && **s <= log.next_seq()).copied(),
        Start::Earliest if first == 0 => None,
        Start::Earliest => seqs.iter().find(|s| **s == first).copied(),
    };
    let Some(seq) = chosen else {
        if first > 0 {
            return Err(LogError::NoGenesis(first).into());
        }
        return Ok((None, 0));
    };
    let entry = log.snapshot(seq)?.ok_or(LogError::BadSnapshot { seq, reason: "missing".into() })?;
    let node = Node::restore(identity.clone(), &entry.node).map_err(|e| match e {
        mynet_core::SnapshotError::WrongIdentity { snapshot, key } => ReplayError::WrongKey { log: snapshot, key },
        other => LogError::BadSnapshot { seq, reason: other.to_string() }.into(),
    })?;
    Ok((Some(node), seq))
}

fn compare(seq: u64, inputs: u64, node: &Node, state_hash: &[u8; 32], output_hash: &[u8; 32]) -> Option<Divergence> {
    let hex = |h: &[u8; 32]| mynet_core::hex::encode(h);
    let state = node.state_hash();
    if state != *state_hash {
        return Some(Divergence { seq, inputs, what: "state", recorded: hex(state_hash), replayed: hex(&state) });
    }
    let output = node.output_hash();
    if output != *output_hash {
        return Some(Divergence { seq, inputs, what: "output", recorded: hex(output_hash), replayed: hex(&output) });
    }
    None
}

/// Replays the whole retained log from scratch and checks it ends in `node`'s state: the
/// simulator's "a restarted node's state equals what its durable log implies".
pub fn verify_against_log(log: &dyn EventLog, node: &Node) -> Result<(), String> {
    let identity_check = node.node_id();
    let (report, replayed) = replay_with_own_key(log, node)?;
    if let Some(divergence) = report.divergence {
        return Err(format!("log of {identity_check} diverges on replay: {divergence}"));
    }
    let replayed = replayed.ok_or("empty log")?;
    if replayed.state_hash() != node.state_hash() {
        return Err(format!("node {identity_check}: live state differs from the state its log implies"));
    }
    Ok(())
}

fn replay_with_own_key(log: &dyn EventLog, node: &Node) -> Result<(ReplayReport, Option<Node>), String> {
    replay(log, node.identity(), Start::Earliest, None, None).map_err(|e| e.to_string())
}

impl<L: EventLog> Journaled<L> {
    /// Starts a new node on an empty log.
    pub fn create(
        mut log: L,
        config: Config,
        identity: Identity,
        rng_seed: u64,
        now: Time,
        out: &mut Vec<Output>,
    ) -> Result<Journaled<L>, StorageError> {
        let genesis = encode_record(&LogRecord::Genesis {
            node_id: identity.node_id(),
            config: Box::new(config.clone()),
            rng_seed,
            time: now,
        });
        let log_bytes = genesis.len() as u64;
        log.append_bytes(genesis)?;
        let mut node = Node::new(config, identity, rng_seed, now);
        out.extend(std::iter::from_fn(|| node.poll_output()));
        Ok(Journaled::assemble(node, log, now.mono, log_bytes, 0))
    }

    /// A journaled node whose counters start now; `snapshot_log_bytes` is `log_bytes` at the
    /// last snapshot (or at genesis).
    fn assemble(node: Node, log: L, now: Mono, log_bytes: u64, snapshot_log_bytes: u64) -> Journaled<L> {
        Journaled {
            node,
            log,
            since_checkpoint: 0,
            since_snapshot: 0,
            last_snapshot: now,
            log_bytes,
            snapshot_log_bytes,
        }
    }

    /// Continues a node from its log: restores the newest snapshot, replays the tail, then
    /// records and handles a restart. A torn last record (a write cut by a crash) is dropped.
    /// An empty log starts a new node instead.
    ///
    /// `clock` gets the time of the last replayed input (`None` for a new log) and returns the
    /// time of the restart, so a driver can keep its monotonic clock going forward.
    pub fn open(
        mut log: L,
        config: Config,
        identity: Identity,
        rng_seed: u64,
        clock: impl FnOnce(Option<Time>) -> Time,
        out: &mut Vec<Output>,
    ) -> Result<(Journaled<L>, Recovery), ReplayError> {
        if log.next_seq() == 0 {
            let now = clock(None);
            return Ok((Journaled::create(log, config, identity, rng_seed, now, out)?, Recovery::default()));
        }
        let mut torn_tail = None;
        let (report, node) = loop {
            // A checkpoint mismatch (a build that behaves differently) is reported, but the
            // whole log is still applied: stopping there would silently drop its tail.
            match replay_inner(&log, &identity, Start::Latest, None, None, false) {
                Err(ReplayError::Storage(StorageError::Log(LogError::Undecodable { seq, .. })))
                    if seq + 1 == log.next_seq() && torn_tail.is_none() =>
                {
                    log.truncate_from(seq)?;
                    torn_tail = Some(seq);
                    if log.next_seq() == 0 {
                        // The crash tore the genesis record itself: nothing durable happened yet.
                        let now = clock(None);
                        let journaled = Journaled::create(log, config, identity, rng_seed, now, out)?;
                        return Ok((journaled, Recovery { torn_tail, ..Recovery::default() }));
                    }
                }
                other => break other?,
            }
        };
        let node = node.ok_or(LogError::Empty)?;
        let log_bytes = tail_bytes(&log, report.from_snapshot)?;
        let recovery = Recovery {
            records: report.records,
            checkpoints: report.checkpoints,
            snapshot: report.from_snapshot,
            torn_tail,
            divergence: report.divergence,
        };
        let now = clock(Some(node.now()));
        let mut journaled = Journaled::assemble(node, log, now.mono, log_bytes, log_bytes);
        journaled.handle(now, Input::Restart { config: Box::new(config), rng_seed }, out)?;
        Ok((journaled, recovery))
    }

    /// Appends `input` to the log, hands it to the node, and collects the outputs into `out`.
    /// Checkpoints and snapshots follow the node's config.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) -> Result<(), StorageError> {
        if self.log.keeps_records() {
            let bytes = encode_input_record(&now, &input);
            self.log_bytes += bytes.len() as u64;
            self.log.append_bytes(bytes)?;
        } else {
            self.log.append_bytes(Vec::new())?;
        }
        self.node.handle(now, input);
        out.extend(std::iter::from_fn(|| self.node.poll_output()));
        self.since_checkpoint += 1;
        self.since_snapshot += 1;
        let config = self.node.config();
        // Large inputs also bring a snapshot forward, so the log behind the newest snapshot
        // never grows far past what retention may cut.
        let bytes_due = (config.log_retain_bytes / 2).clamp(SNAPSHOT_BYTES_MIN, SNAPSHOT_BYTES_MAX);
        let snapshot_due = self.since_snapshot >= config.snapshot_interval_events
            || now.mono.ms_since(self.last_snapshot) >= config.snapshot_interval_ms
            || self.log_bytes - self.snapshot_log_bytes >= bytes_due;
        if snapshot_due {
            self.snapshot(now)?;
        } else if self.since_checkpoint >= config.checkpoint_interval_events {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn append(&mut self, record: &LogRecord) -> Result<u64, StorageError> {
        if !self.log.keeps_records() {
            return self.log.append_bytes(Vec::new());
        }
        let bytes = encode_record(record);
        self.log_bytes += bytes.len() as u64;
        self.log.append_bytes(bytes)
    }

    /// Records the node's state and output hashes now.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.since_checkpoint = 0;
        let record = LogRecord::Checkpoint {
            state_hash: self.node.state_hash(),
            output_hash: self.node.output_hash(),
            outputs_total: self.node.outputs_total(),
        };
        self.append(&record).map(|_| ())
    }

    /// Checkpoints, then has the log store a snapshot after the checkpoint, make it durable,
    /// and cut the log segments the retention limits no longer keep (a log that writes on
    /// another thread does that work there, in order with its appends).
    pub fn snapshot(&mut self, now: Time) -> Result<(), StorageError> {
        self.checkpoint()?;
        let seq = self.log.next_seq();
        let entry = SnapshotEntry { taken_at: now, log_bytes: self.log_bytes, node: self.node.snapshot() };
        let config = self.node.config();
        let retention = Retention {
            now,
            log_bytes: self.log_bytes,
            max_bytes: config.log_retain_bytes,
            max_age_ms: config.log_retain_ms,
        };
        self.log.commit_snapshot(seq, entry, retention)?;
        self.since_snapshot = 0;
        self.last_snapshot = now.mono;
        self.snapshot_log_bytes = self.log_bytes;
        Ok(())
    }

    /// The node, for getters.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The log, to sync it.
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Gives the log back (e.g. to simulate a crash and reopen it).
    pub fn into_log(self) -> L {
        self.log
    }

    /// The same node over another log that holds the same records: production recovers
    /// through the log directly, then hands it to a storage thread.
    pub fn try_map_log<M: EventLog, E>(self, f: impl FnOnce(L) -> Result<M, E>) -> Result<Journaled<M>, E> {
        let next_seq = self.log.next_seq();
        let log = f(self.log)?;
        assert_eq!(log.next_seq(), next_seq, "the new log must hold the same records");
        Ok(Journaled {
            node: self.node,
            log,
            since_checkpoint: self.since_checkpoint,
            since_snapshot: self.since_snapshot,
            last_snapshot: self.last_snapshot,
            snapshot_log_bytes: self.snapshot_log_bytes,
            log_bytes: self.log_bytes,
        })
    }
}

/// Log bytes from genesis to the end, given the snapshot replay started from.
fn tail_bytes(log: &dyn EventLog, from_snapshot: Option<u64>) -> Result<u64, StorageError> {
    let (base, from) = match from_snapshot {
        Some(seq) => (log.snapshot(seq)?.map_or(0, |e| e.log_bytes), seq),
        None => (0, log.first_seq()),
    };
    let mut total = base;
    for raw in log.scan(from) {
        total += raw?.1.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemLog;
    use mynet_core::ConnId;

    fn drive(j: &mut Journaled<MemLog>, out: &mut Vec<Output>) {
        for i in 0..5u64 {
            j.handle(
                Time::new(1000 * i, i),
                Input::Incoming { conn: ConnId::inbound(i), addr: ([10, 0, 0, 1], 9).into() },
                out,
            )
            .expect("handle");
        }
        j.handle(Time::new(20_000_000, 20), Input::Tick, out).expect("tick");
        j.checkpoint().expect("checkpoint");
    }

    #[test]
    fn replay_reproduces_and_detects_tampering() {
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let config = Config { checkpoint_interval_events: 2, ..Config::default() };
        let mut out = Vec::new();
        let mut j = Journaled::create(MemLog::new(), config.clone(), identity.clone(), 5, Time::default(), &mut out)
            .expect("create");
        drive(&mut j, &mut out);
        let (report, _) = replay(j.log(), &identity, Start::Earliest, None, None).expect("replays");
        assert_eq!((report.events, report.checkpoints, report.divergence), (6, 4, None));

        // A log whose recorded inputs were changed no longer reproduces its checkpoints.
        let mut tampered = MemLog::new();
        for (seq, record) in crate::log::read_records(j.log()).map(|r| r.expect("decodes")) {
            let record = match record {
                LogRecord::Input { time, input: Input::Incoming { conn, .. } } if seq == 2 => {
                    LogRecord::Input { time, input: Input::Incoming { conn, addr: ([10, 0, 0, 2], 9).into() } }
                }
                other => other,
            };
            tampered.append(&record).expect("append");
        }
        let (report, _) = replay(&tampered, &identity, Start::Earliest, None, None).expect("replays");
        assert_eq!(report.divergence.expect("diverges").what, "state");

        // Reopening continues the same node: the restart is an input like any other.
        let log = j.into_log();
        let (reopened, recovery) =
            Journaled::open(log, config, identity.clone(), 6, |_| Time::new(30_000_000, 30), &mut out).expect("open");
        assert_eq!(recovery.divergence, None);
        assert_eq!(reopened.node().status(Time::new(30_000_000, 30)).counters.restarts, 1);
        let other = Identity::from_secret_bytes(&[2; 32]);
        assert!(matches!(
            replay(reopened.log(), &other, Start::Earliest, None, None),
            Err(ReplayError::WrongKey { .. })
        ));
    }

    #[test]
    fn snapshots_cut_the_log_and_restarts_resume_from_them() {
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let config = Config {
            snapshot_interval_events: 3,
            checkpoint_interval_events: 2,
            log_retain_bytes: 0,
            ..Config::default()
        };
        let mut out = Vec::new();
        let mut j = Journaled::create(MemLog::new(), config.clone(), identity.clone(), 5, Time::default(), &mut out)
            .expect("create");
        drive(&mut j, &mut out);
        let log = j.log();
        assert!(log.first_seq() > 0, "retention 0 cuts everything behind the newest snapshot");
        assert_eq!(log.snapshot_seqs().expect("seqs").first().copied(), Some(log.first_seq()));
        verify_against_log(log, j.node()).expect("the cut log still implies the live state");
        let (report, _) = replay(log, &identity, Start::Earliest, None, None).expect("replays");
        assert_eq!((report.from_snapshot, report.divergence), (Some(log.first_seq()), None));

        let state_before = j.node().state_hash();
        let log = j.into_log();
        let mut restored = None;
        let (reopened, recovery) = Journaled::open(
            log,
            config,
            identity,
            6,
            |last| {
                restored = last;
                Time::new(40_000_000, 40)
            },
            &mut out,
        )
        .expect("open");
        assert!(recovery.snapshot.is_some());
        assert!(restored.is_some());
        assert_ne!(reopened.node().state_hash(), state_before, "the restart is an input that changes state");
        verify_against_log(reopened.log(), reopened.node()).expect("consistent after restart");
    }

    #[test]
    fn a_torn_last_write_is_dropped_on_open() {
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let config = Config::default();
        let mut out = Vec::new();
        let mut j = Journaled::create(MemLog::new(), config.clone(), identity.clone(), 5, Time::default(), &mut out)
            .expect("create");
        j.log_mut().sync().expect("sync");
        drive(&mut j, &mut out);
        let mut log = j.into_log();
        let before = log.next_seq();
        log.crash(3, true);
        assert_eq!(log.next_seq(), 4, "genesis synced, three unsynced kept");
        let (reopened, recovery) =
            Journaled::open(log, config, identity, 6, |_| Time::new(50_000_000, 50), &mut out).expect("open");
        assert_eq!(recovery.torn_tail, Some(3));
        assert!(before > 4);
        verify_against_log(reopened.log(), reopened.node()).expect("consistent after the crash");
    }

    /// Regression (sim `--faults all --seed 1 --nodes 100`): a crash that tore the genesis
    /// record left a log that could neither be replayed nor started afresh.
    #[test]
    fn a_torn_genesis_starts_the_node_afresh() {
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let mut out = Vec::new();
        let j = Journaled::create(MemLog::new(), Config::default(), identity.clone(), 5, Time::default(), &mut out)
            .expect("create");
        let mut log = j.into_log();
        log.crash(1, true);
        assert_eq!(log.next_seq(), 1, "the torn genesis is all that is left");
        let (reopened, recovery) =
            Journaled::open(log, Config::default(), identity, 6, |_| Time::new(1_000, 1), &mut out).expect("open");
        assert_eq!(recovery.torn_tail, Some(0));
        verify_against_log(reopened.log(), reopened.node()).expect("consistent");
    }

    #[test]
    fn large_inputs_bring_a_snapshot_forward() {
        let identity = Identity::from_secret_bytes(&[1; 32]);
        let config = Config { snapshot_interval_events: 1_000_000, log_retain_bytes: 128 * 1024, ..Config::default() };
        let mut out = Vec::new();
        let mut j = Journaled::create(MemLog::new(), config, identity, 5, Time::default(), &mut out).expect("create");
        for i in 0..10u64 {
            // Inputs for an unknown connection are logged (and ignored by the node).
            let input = Input::Received { conn: ConnId(99), bytes: vec![7; 10_000] };
            j.handle(Time::new(1000 * i, i), input, &mut out).expect("handle");
        }
        assert!(!j.log().snapshot_seqs().expect("seqs").is_empty(), "100 KB of inputs passed half the retention limit");
    }
}
