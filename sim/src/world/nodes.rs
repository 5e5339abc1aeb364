//! Honest nodes: start-up, inputs, per-step safety checks, crashes and restarts.

use super::*;

// ---- honest nodes ----
impl World {
    pub(super) fn honest_mut(&mut self, n: usize) -> Option<&mut Honest> {
        match &mut self.nodes[n].actor {
            Actor::Honest(h) => Some(h),
            Actor::Adversary(_) => None,
        }
    }

    pub(super) fn honest(&self, n: usize) -> Option<&Honest> {
        match &self.nodes[n].actor {
            Actor::Honest(h) => Some(h),
            Actor::Adversary(_) => None,
        }
    }

    pub(super) fn node_config(&self, n: usize) -> Config {
        let mut config = self.config.node_config.clone();
        config.listen_addr = self.nodes[n].addr;
        if self.config.publishers > 0 {
            config.publishers = (0..self.publisher_count()).map(|p| self.nodes[p].identity.public_key()).collect();
        }
        if self.config.catalogue > 0 {
            // A large catalogue makes every snapshot large: snapshot as production does, not
            // every few hundred KiB of log as the simulator's default does.
            let defaults = Config::default();
            config.replicate = mynet_core::config::Replicate::None;
            config.log_retain_bytes = defaults.log_retain_bytes;
            config.snapshot_interval_events = defaults.snapshot_interval_events;
        }
        config.lan_discovery = self.config.lan > 0;
        if n > 0 && self.config.lan == 0 {
            let first = &self.nodes[0];
            config.bootstrap_nodes = vec![BootstrapNode {
                node_id: first.identity.node_id(),
                address: first.addr,
                public_key: first.identity.public_key(),
            }];
        }
        config
    }

    pub(super) fn start(&mut self, n: usize) -> Result<(), SimError> {
        let keep = self.config.keep_logs.contains(&n) || self.config.faults.crash_every_ms > 0;
        let log = if keep { SimLog::Memory(MemLog::new()) } else { SimLog::Discard { next: 0 } };
        let (config, seed, time) = (self.node_config(n), self.rng.next_u64(), self.nodes[n].clock.read(self.now_us));
        let identity = self.nodes[n].identity.clone();
        let mut outputs = std::mem::take(&mut self.outputs);
        let journaled = Journaled::create(log, config, identity, seed, time, &mut outputs)
            .map_err(|e| self.invariant(n, Violation::Storage(e.to_string())))?;
        let now = self.now_us;
        if let Some(h) = self.honest_mut(n) {
            h.journaled = Some(journaled);
            h.started_us = Some(now);
            h.last_sync_us = now;
        }
        self.after_step(n, outputs)
    }

    pub(super) fn deliver_input(&mut self, to: End, input: Input) -> Result<(), SimError> {
        let (n, epoch, _) = to;
        if self.nodes[n].epoch != epoch {
            return Ok(());
        }
        match &self.nodes[n].actor {
            Actor::Honest(_) => self.node_input(n, input),
            Actor::Adversary(_) => {
                self.adversary_input(n, input);
                Ok(())
            }
        }
    }

    pub(super) fn node_input(&mut self, n: usize, input: Input) -> Result<(), SimError> {
        let (time, now) = (self.nodes[n].clock.read(self.now_us), self.now_us);
        let mut outputs = std::mem::take(&mut self.outputs);
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        let Some(journaled) = h.journaled.as_mut() else { return Ok(()) };
        let mut result = journaled.handle(time, input, &mut outputs);
        if result.is_ok() && now.saturating_sub(h.last_sync_us) >= SYNC_INTERVAL_US {
            h.last_sync_us = now;
            result = journaled.log_mut().sync();
        }
        result.map_err(|e| self.invariant(n, Violation::Storage(e.to_string())))?;
        self.after_step(n, outputs)
    }

    pub(super) fn after_step(&mut self, n: usize, mut outputs: Vec<Output>) -> Result<(), SimError> {
        self.safety_checks += 1;
        let check = self.honest(n).and_then(|h| h.journaled.as_ref()).map(|j| j.node().check_invariants());
        if let Some(Err(violation)) = check {
            return Err(self.invariant(n, Violation::Node(violation)));
        }
        for output in outputs.drain(..) {
            self.observe(n, &output)?;
            self.apply(n, output);
        }
        self.outputs = outputs;
        self.after_outputs(n);
        self.reschedule_timer(n);
        Ok(())
    }

    /// Per-output safety checks and statistics.
    pub(super) fn observe(&mut self, n: usize, output: &Output) -> Result<(), SimError> {
        self.observe_content(n, output)?;
        match output {
            Output::Send { bytes, .. } => self.scan_frame(n, bytes)?,
            Output::Event(Event::ItemComplete { id, .. } | Event::ItemAdded { id, .. }) => {
                self.want_served(n, *id);
                self.schedule_decrypt_checks(n, *id)
            }
            Output::Event(event @ Event::LookupDone { .. }) => self.observe_lookup(n, event),
            Output::Event(Event::StartupFailed {
                reason: mynet_core::StartupFailure::BootstrapRefused { .. }, ..
            }) => self.refused_startups += 1,
            _ => {}
        }
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        match output {
            Output::Dial { conn, .. } => {
                h.dialled_at.insert(*conn, now);
            }
            Output::Event(Event::PeerConnected { conn, direction, .. }) => {
                h.established.insert(*conn);
                if let (Direction::Outbound, Some(at)) = (direction, h.dialled_at.remove(conn)) {
                    self.handshakes.record(now - at);
                }
            }
            Output::Event(Event::ConnectionClosed { conn, .. }) => {
                h.established.remove(conn);
                h.dialled_at.remove(conn);
            }
            Output::Send { conn, bytes } if !h.established.contains(conn) => {
                if let Some(what) = non_handshake_message(bytes) {
                    return Err(self.invariant(n, Violation::TrafficBeforeHandshake { conn: *conn, what }));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Failed start-ups are restarted; the first time a node meets its peer target is recorded.
    pub(super) fn after_outputs(&mut self, n: usize) {
        let (target, now) = (self.target_of(n), self.now_us);
        let Some(h) = self.honest_mut(n) else { return };
        let Some(node) = h.journaled.as_ref().map(Journaled::node) else { return };
        let (failed, peers) = (node.phase() == Phase::Failed, node.peer_ids().len());
        let mut reached = None;
        if peers >= target {
            h.below_target_since = None;
        } else {
            h.below_target_since.get_or_insert(now);
        }
        if !h.target_reached && peers >= target {
            h.target_reached = true;
            reached = h.started_us.map(|s| now - s);
        }
        let restart = failed && !h.restart_pending;
        if restart {
            h.restart_pending = true;
        }
        if let Some(us) = reached {
            self.to_target.record(us);
        }
        if restart {
            self.count("startup_failed_restart");
            self.schedule(now + FAILED_RESTART_US, Ev::Restart(n));
        }
    }

    pub(super) fn timer(&mut self, n: usize, epoch: u32) -> Result<(), SimError> {
        if self.nodes[n].epoch != epoch {
            return Ok(());
        }
        let clock = self.nodes[n].clock;
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        let due = h.timer.is_some_and(|t| clock.sim_time_of(t) <= now);
        if !due {
            return Ok(());
        }
        h.timer = None;
        self.node_input(n, Input::Tick)
    }

    pub(super) fn reschedule_timer(&mut self, n: usize) {
        let (clock, epoch, now) = (self.nodes[n].clock, self.nodes[n].epoch, self.now_us);
        let Some(h) = self.honest_mut(n) else { return };
        let next = h.journaled.as_ref().and_then(|j| j.node().poll_timeout()).map(|(at, _)| at);
        if next != h.timer {
            h.timer = next;
            if let Some(at) = next {
                self.schedule(clock.sim_time_of(at).max(now), Ev::Timer { node: n, epoch });
            }
        }
    }

    pub(super) fn crash(&mut self, n: usize) -> Result<(), SimError> {
        let alive = self.honest(n).is_some_and(|h| h.journaled.is_some() && !h.restart_pending);
        let mean = self.config.faults.crash_every_ms;
        if !self.faults_active() || !alive {
            if let Some(after) = next_after(&mut self.rng, mean) {
                self.schedule(self.now_us + after, Ev::Crash(n));
            }
            return Ok(());
        }
        self.count("crash");
        self.stop_node(n, true);
        let down = 1_000_000 + upto(&mut self.rng, self.config.faults.down_ms_max * 1000);
        if let Some(h) = self.honest_mut(n) {
            h.restart_pending = true;
        }
        self.schedule(self.now_us + down, Ev::Restart(n));
        if let Some(after) = next_after(&mut self.rng, mean) {
            self.schedule(self.now_us + down + after, Ev::Crash(n));
        }
        Ok(())
    }

    /// Ends a node's process: its connections reset, its log keeps what was durable (a crash
    /// loses unsynced records and may tear the last one; a clean exit syncs).
    pub(super) fn stop_node(&mut self, n: usize, crash: bool) {
        self.nodes[n].epoch += 1;
        self.reset_all_links(n, "connection reset by peer");
        let keep = self.rng.next_u64();
        let tear = chance(&mut self.rng, 0.5);
        let Some(h) = self.honest_mut(n) else { return };
        let Some(journaled) = h.journaled.take() else { return };
        let mut log = journaled.into_log();
        match (&mut log, crash) {
            (SimLog::Memory(mem), true) => {
                let kept = (keep % (mem.unsynced() as u64 + 1)) as usize;
                mem.crash(kept, tear);
            }
            _ => {
                let _ = log.sync();
            }
        }
        h.down_log = Some(log);
        h.timer = None;
        h.established.clear();
        h.dialled_at.clear();
    }

    pub(super) fn restart(&mut self, n: usize) -> Result<(), SimError> {
        if self.vanished(n) {
            return Ok(());
        }
        if self.honest(n).is_some_and(|h| h.journaled.is_some()) {
            self.stop_node(n, false);
        }
        let (config, seed, time) = (self.node_config(n), self.rng.next_u64(), self.nodes[n].clock.read(self.now_us));
        let identity = self.nodes[n].identity.clone();
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        h.restart_pending = false;
        let Some(log) = h.down_log.take() else { return Ok(()) };
        let mut outputs = std::mem::take(&mut self.outputs);
        let journaled = match log {
            SimLog::Discard { .. } => {
                Journaled::create(SimLog::Discard { next: 0 }, config, identity, seed, time, &mut outputs)
                    .map_err(|e| e.to_string())
            }
            memory => Journaled::open(memory, config, identity, seed, |_| time, &mut outputs)
                .map(|(j, _)| j)
                .map_err(|e| e.to_string()),
        };
        let journaled = journaled.map_err(|e| self.invariant(n, Violation::RestartFailed(e)))?;
        if matches!(journaled.log(), SimLog::Memory(_)) {
            verify_against_log(journaled.log(), journaled.node())
                .map_err(|e| self.invariant(n, Violation::LogDisagrees(e)))?;
        }
        self.count("restart");
        if let Some(h) = self.honest_mut(n) {
            h.journaled = Some(journaled);
            h.last_sync_us = now;
        }
        self.check_held_durable(n)?;
        self.after_step(n, outputs)?;
        self.forget_lost(n);
        self.reconcile_store(n)
    }

    pub(super) fn invariant(&self, n: usize, violation: Violation) -> SimError {
        SimError::Invariant {
            violation,
            node: n,
            node_id: self.nodes[n].identity.node_id(),
            time_ms: self.now_us / 1000,
            command: self.config.command(),
        }
    }
}

/// The first frame in `bytes` that is not part of a handshake (a refusal replaces its answer),
/// by name.
fn non_handshake_message(bytes: &[u8]) -> Option<&'static str> {
    let mut buffer = FrameBuffer::default();
    let mut frames = Vec::new();
    if buffer.push(bytes, &mut frames).is_err() {
        return Some("an oversized frame");
    }
    frames.iter().find_map(|f| match wire::decode_body(f) {
        Ok(Message::Hello(_) | Message::HelloAck(_) | Message::Refused(_)) => None,
        Ok(_) => Some("a protocol message"),
        Err(_) => Some("an undecodable frame"),
    })
}
