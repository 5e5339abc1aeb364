//! Samples of a run over simulated time (`mynet sim --report`): what the report page plots.
//!
//! A sample only reads state: it draws nothing from the generator and schedules no event, so
//! a run with samples has the same events and the same trace hash as one without. Samples are
//! taken between events at fixed simulated times; each is one pass over the honest nodes
//! (their peer counts and, with `--content`, their items), never work per event.

use mynet_core::content::ContentId;

use super::*;

/// Most samples one run keeps (time zero, every interval, and the end).
pub const SAMPLES_MAX: usize = 2_000;
/// The interval in runs of 100 s or more, until [`SAMPLES_MAX`] makes it longer.
const INTERVAL_US: u64 = 1_000_000;
/// The shortest interval (runs under 1 s).
const INTERVAL_US_MIN: u64 = 10_000;

/// The figures of the run at one simulated time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub at_us: u64,
    /// Honest nodes running (started, not crashed or vanished).
    pub nodes_up: usize,
    /// Running honest nodes in phase ready.
    pub nodes_ready: usize,
    /// Honest nodes down after a crash, waiting for their restart.
    pub nodes_crashed: usize,
    /// Fewest established peers (transient DHT contacts excluded) of a running honest node.
    pub peers_min: usize,
    /// Mean established peers over the running honest nodes.
    pub peers_mean: f64,
    /// Most established peers of a running honest node.
    pub peers_max: usize,
    /// (node, item) pairs held completely by running replicating nodes (`--content`).
    pub replicas_complete: u64,
    /// Items added so far times the replicating nodes: what full replication would hold.
    pub replicas_expected: u64,
    /// Honest nodes on the cut-off side of a partition (0: no partition).
    pub nodes_partitioned: usize,
    /// Honest nodes whose clock jumped and is not corrected yet.
    pub clocks_jumped: usize,
    /// Faults injected so far, of every kind (the summary's `faults_injected`, summed).
    pub faults_injected: u64,
    /// Safety checks run so far: one per node step (the node's own invariants and every output
    /// it made), each of which would have stopped the run on a violation.
    pub safety_checks: u64,
}

/// The samples of one run.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Simulated time between samples.
    pub interval_us: u64,
    /// In time order; at most [`SAMPLES_MAX`].
    pub samples: Vec<Sample>,
    next_us: u64,
}

impl Timeline {
    /// An empty timeline for a run of `duration_us`.
    pub fn new(duration_us: u64) -> Timeline {
        let interval_us = sample_interval_us(duration_us);
        let capacity = (duration_us / interval_us) as usize + 2;
        Timeline { interval_us, samples: Vec::with_capacity(capacity), next_us: 0 }
    }
}

/// 1 s of simulated time; finer in runs under 100 s (a hundred intervals, at least 10 ms),
/// coarser when that would give more than [`SAMPLES_MAX`] samples.
pub fn sample_interval_us(duration_us: u64) -> u64 {
    let fine = duration_us.div_ceil(100).clamp(INTERVAL_US_MIN, INTERVAL_US);
    // Samples at 0, every interval up to the end, and the end itself.
    fine.max(duration_us.div_ceil(SAMPLES_MAX as u64 - 2))
}

impl World {
    /// The samples taken so far, when the run was configured with `timeline`.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    /// Takes every sample due strictly before `at_us` (the time of the next event).
    pub(super) fn sample_before(&mut self, at_us: u64) {
        while let Some(due) = self.timeline.as_ref().map(|t| t.next_us).filter(|due| *due < at_us) {
            self.take_sample(due);
        }
    }

    /// Takes every sample due at or before `until_us` (the run has processed every event up
    /// to it).
    pub(super) fn sample_through(&mut self, until_us: u64) {
        self.sample_before(until_us.saturating_add(1));
    }

    /// Takes a last sample now, unless one was just taken: the end of a run that does not end
    /// on an interval, or the step that broke an invariant.
    pub(super) fn sample_now(&mut self) {
        let now = self.now_us;
        let last = self.timeline.as_ref().and_then(|t| t.samples.last()).map(|s| s.at_us);
        if self.timeline.is_some() && last.is_none_or(|at| at < now) {
            self.take_sample(now);
        }
    }

    fn take_sample(&mut self, at_us: u64) {
        let sample = self.sample(at_us);
        let Some(timeline) = self.timeline.as_mut() else { return };
        if timeline.samples.len() < SAMPLES_MAX {
            timeline.samples.push(sample);
        }
        timeline.next_us = (at_us / timeline.interval_us + 1) * timeline.interval_us;
    }

    fn sample(&self, at_us: u64) -> Sample {
        let mut sample = Sample {
            at_us,
            nodes_up: 0,
            nodes_ready: 0,
            nodes_crashed: 0,
            peers_min: 0,
            peers_mean: 0.0,
            peers_max: 0,
            replicas_complete: 0,
            replicas_expected: 0,
            nodes_partitioned: 0,
            clocks_jumped: 0,
            faults_injected: self.counts.values().sum(),
            safety_checks: self.safety_checks,
        };
        let (mut peers_min, mut peers_sum, mut replicating) = (usize::MAX, 0, 0);
        let content = self.config.content > 0;
        // As in the summary: items added so far at a node that serves them honestly.
        let added: BTreeSet<ContentId> = if content {
            self.content.items.iter().filter(|i| i.at_us <= at_us && self.added(i)).map(|i| i.id).collect()
        } else {
            BTreeSet::new()
        };
        for n in 0..self.honest {
            let sim_node = &self.nodes[n];
            if sim_node.clock.wall_skew_ms != sim_node.base_skew_ms {
                sample.clocks_jumped += 1;
            }
            if self.partition.as_ref().is_some_and(|p| p.side[n]) {
                sample.nodes_partitioned += 1;
            }
            let replicates = content && self.replicates(n);
            replicating += usize::from(replicates);
            let Some(h) = self.honest(n) else { continue };
            let Some(node) = h.journaled.as_ref().map(Journaled::node) else {
                if h.down_log.is_some() && !self.vanished(n) {
                    sample.nodes_crashed += 1;
                }
                continue;
            };
            let peers = node.peer_ids().len();
            sample.nodes_up += 1;
            sample.nodes_ready += usize::from(node.phase() == Phase::Ready);
            peers_min = peers_min.min(peers);
            peers_sum += peers;
            sample.peers_max = sample.peers_max.max(peers);
            if replicates {
                let held = node.content().items().iter().filter(|(id, i)| i.complete() && added.contains(id));
                sample.replicas_complete += held.count() as u64;
            }
        }
        if sample.nodes_up > 0 {
            sample.peers_min = peers_min;
            sample.peers_mean = peers_sum as f64 / sample.nodes_up as f64;
        }
        sample.replicas_expected = (added.len() * replicating) as u64;
        sample
    }
}
