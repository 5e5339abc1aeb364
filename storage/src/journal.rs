//! A node bound to its event log: every input is appended before the node sees it, and every
//! `checkpoint_interval_events` inputs the log records the node's state and output hashes.
//! Production and the simulator drive nodes through this type; replay reads what it wrote.

use mynet_core::{Config, Identity, Input, Node, NodeId, Output, Time};
use thiserror::Error;

use crate::log::{EventLog, LogError, LogRecord, StorageError, read_records};

/// A node whose inputs are journaled.
#[derive(Debug)]
pub struct Journaled<L: EventLog> {
    node: Node,
    log: L,
    since_checkpoint: u64,
}

/// What recovering from an existing log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read back.
    pub records: u64,
    /// Checkpoints that matched.
    pub checkpoints: u64,
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
    /// First checkpoint that differed; `None` means every checkpoint was reproduced.
    pub divergence: Option<Divergence>,
    /// Sequence number replay stopped after (the `until` point or the last record).
    pub stopped_at: Option<u64>,
}

/// Called for every record replayed, with the outputs it produced.
pub type Observer<'a> = dyn FnMut(u64, &LogRecord, &[Output], &Node) + 'a;

/// Runs `log` through a fresh node. Stops at the first divergent checkpoint, or after record
/// `until`. Returns the node as it stands at the stop point.
pub fn replay(
    log: &dyn EventLog,
    identity: &Identity,
    until: Option<u64>,
    observer: &mut Observer<'_>,
) -> Result<(ReplayReport, Option<Node>), ReplayError> {
    let mut report = ReplayReport::default();
    let mut node: Option<Node> = None;
    let mut outputs = Vec::new();
    for item in read_records(log) {
        let (seq, record) = item?;
        report.records += 1;
        outputs.clear();
        match &record {
            LogRecord::Genesis { node_id, config, rng_seed, time } => {
                if *node_id != identity.node_id() {
                    return Err(ReplayError::WrongKey { log: *node_id, key: identity.node_id() });
                }
                let mut fresh = Node::new((**config).clone(), identity.clone(), *rng_seed, *time);
                outputs.extend(std::iter::from_fn(|| fresh.poll_output()));
                node = Some(fresh);
            }
            LogRecord::Input { time, input } => {
                let n = node.as_mut().ok_or(LogError::NoGenesis)?;
                report.restarts += u64::from(matches!(input, Input::Restart { .. }));
                n.handle(*time, input.clone());
                outputs.extend(std::iter::from_fn(|| n.poll_output()));
                report.events += 1;
            }
            LogRecord::Checkpoint { state_hash, output_hash, .. } => {
                let n = node.as_ref().ok_or(LogError::NoGenesis)?;
                match compare(seq, report.events, n, state_hash, output_hash) {
                    None => report.checkpoints += 1,
                    Some(divergence) => report.divergence = Some(divergence),
                }
            }
        }
        if let Some(n) = node.as_ref() {
            observer(seq, &record, &outputs, n);
        }
        report.stopped_at = Some(seq);
        if report.divergence.is_some() || until.is_some_and(|u| seq >= u) {
            break;
        }
    }
    if report.records == 0 {
        return Err(LogError::Empty.into());
    }
    report.outputs = node.as_ref().map_or(0, Node::outputs_total);
    Ok((report, node))
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
        log.append(&LogRecord::Genesis {
            node_id: identity.node_id(),
            config: Box::new(config.clone()),
            rng_seed,
            time: now,
        })?;
        let mut node = Node::new(config, identity, rng_seed, now);
        out.extend(std::iter::from_fn(|| node.poll_output()));
        Ok(Journaled { node, log, since_checkpoint: 0 })
    }

    /// Continues a node from its log: replays it, then records and handles a restart.
    /// An empty log starts a new node instead.
    /// `clock` gets the time of the last replayed input (`None` for a new log) and returns the
    /// time of the restart, so a driver can keep its monotonic clock going forward.
    pub fn open(
        log: L,
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
        let (report, node) = replay(&log, &identity, None, &mut |_, _, _, _| {})?;
        let node = node.ok_or(LogError::NoGenesis)?;
        let recovery =
            Recovery { records: report.records, checkpoints: report.checkpoints, divergence: report.divergence };
        let now = clock(Some(node.now()));
        let mut journaled = Journaled { node, log, since_checkpoint: 0 };
        journaled.handle(now, Input::Restart { config: Box::new(config), rng_seed }, out)?;
        Ok((journaled, recovery))
    }

    /// Appends `input` to the log, hands it to the node, and collects the outputs into `out`.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) -> Result<(), StorageError> {
        self.log.append(&LogRecord::Input { time: now, input: input.clone() })?;
        self.node.handle(now, input);
        out.extend(std::iter::from_fn(|| self.node.poll_output()));
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.node.config().checkpoint_interval_events {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Records the node's state and output hashes now.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.since_checkpoint = 0;
        let record = LogRecord::Checkpoint {
            state_hash: self.node.state_hash(),
            output_hash: self.node.output_hash(),
            outputs_total: self.node.outputs_total(),
        };
        self.log.append(&record).map(|_| ())
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
        let (report, _) = replay(j.log(), &identity, None, &mut |_, _, _, _| {}).expect("replays");
        assert_eq!((report.events, report.checkpoints, report.divergence), (6, 4, None));

        // A log whose recorded inputs were changed no longer reproduces its checkpoints.
        let mut tampered = MemLog::new();
        for (seq, record) in read_records(j.log()).map(|r| r.expect("decodes")) {
            let record = match record {
                LogRecord::Input { time, input: Input::Incoming { conn, .. } } if seq == 2 => {
                    LogRecord::Input { time, input: Input::Incoming { conn, addr: ([10, 0, 0, 2], 9).into() } }
                }
                other => other,
            };
            tampered.append(&record).expect("append");
        }
        let (report, _) = replay(&tampered, &identity, None, &mut |_, _, _, _| {}).expect("replays");
        assert_eq!(report.divergence.expect("diverges").what, "state");

        // Reopening continues the same node: the restart is an input like any other.
        let log = j.into_log();
        let (reopened, recovery) =
            Journaled::open(log, config, identity.clone(), 6, |_| Time::new(30_000_000, 30), &mut out).expect("open");
        assert_eq!(recovery.divergence, None);
        assert_eq!(reopened.node().status(Time::new(30_000_000, 30)).counters.restarts, 1);
        let other = Identity::from_secret_bytes(&[2; 32]);
        assert!(matches!(
            replay(reopened.log(), &other, None, &mut |_, _, _, _| {}),
            Err(ReplayError::WrongKey { .. })
        ));
    }
}
