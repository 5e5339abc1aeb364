//! The production driver: owns the journaled node, executes its outputs with tokio, feeds it
//! network events, timers, API requests and signals.

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use mynet_core::{ConnId, Event, Input, Mono, Output, Phase, Time};
use mynet_storage::{EventLog, FjallLog, Journaled};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::transport::{NetEvent, Transport};

/// How often the event log is made durable while running.
pub const LOG_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// The node's clock: monotonic microseconds that continue across restarts, plus wall time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    offset_us: u64,
}

impl Clock {
    /// A clock whose first reading is at least `after` + 1 ms.
    pub fn starting_after(after: Option<Time>) -> Clock {
        Clock { origin: Instant::now(), offset_us: after.map_or(0, |t| t.mono.0 + 1000) }
    }

    /// Now.
    pub fn now(&self) -> Time {
        Time::new(self.offset_us + self.origin.elapsed().as_micros() as u64, wall_ms())
    }

    /// The tokio instant of monotonic reading `at`.
    pub fn instant_of(&self, at: Mono) -> tokio::time::Instant {
        let since_origin = Duration::from_micros(at.0.saturating_sub(self.offset_us));
        tokio::time::Instant::from_std(self.origin + since_origin)
    }
}

/// Wall-clock Unix milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A question from the local API, answered with an HTTP status and a JSON body.
#[derive(Debug)]
pub struct ApiRequest {
    pub path: String,
    pub reply: oneshot::Sender<(u16, String)>,
}

struct ConnHandle {
    task: Option<JoinHandle<()>>,
    writer: Option<mpsc::Sender<Vec<u8>>>,
}

/// Facts about this process that status reports beside the node's own.
#[derive(Clone, Debug)]
pub struct Facts {
    pub listen_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub data_dir: String,
    pub startup_time_ms: u64,
}

/// Runs a node until shutdown or a failed start-up phase.
pub struct Driver {
    journal: Journaled<FjallLog>,
    clock: Clock,
    transport: Transport,
    conns: HashMap<ConnId, ConnHandle>,
    incoming: HashMap<ConnId, TcpStream>,
    follow_up: VecDeque<Input>,
    outputs: Vec<Output>,
    facts: Facts,
    failure: Option<(Phase, String)>,
    sync_task: Option<JoinHandle<Result<(), mynet_storage::StorageError>>>,
}

impl Driver {
    /// A driver for a node that has been created or recovered; `initial` are its first outputs.
    pub fn new(
        journal: Journaled<FjallLog>,
        clock: Clock,
        transport: Transport,
        facts: Facts,
        initial: Vec<Output>,
    ) -> Driver {
        let mut driver = Driver {
            journal,
            clock,
            transport,
            conns: HashMap::new(),
            incoming: HashMap::new(),
            follow_up: VecDeque::new(),
            outputs: Vec::new(),
            facts,
            failure: None,
            sync_task: None,
        };
        driver.execute(initial);
        driver
    }

    /// The main loop. Returns when `shutdown` fires (Ok) or start-up fails (Err).
    pub async fn run(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        mut api: mpsc::Receiver<ApiRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), (Phase, anyhow::Error)> {
        let phase = self.journal.node().phase();
        self.main_loop(&mut net, &mut api, shutdown).await.map_err(|e| match self.failure.take() {
            Some((failed, reason)) => (failed, anyhow!(reason)),
            None => (phase.max(self.journal.node().phase()), e),
        })
    }

    async fn main_loop(
        &mut self,
        net: &mut mpsc::Receiver<NetEvent>,
        api: &mut mpsc::Receiver<ApiRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut sync = tokio::time::interval(LOG_SYNC_INTERVAL);
        loop {
            if let Some((_, reason)) = &self.failure {
                let reason = reason.clone();
                self.finish()?;
                return Err(anyhow!(reason));
            }
            let deadline = self.journal.node().poll_timeout().map(|(at, _)| self.clock.instant_of(at));
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    self.feed(Input::Shutdown)?;
                    return self.finish();
                }
                // Timers and log syncs come before network events, so a busy network cannot
                // starve deadlines (handshake and request timeouts) or durability.
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                    if deadline.is_some() {
                        self.feed(Input::Tick)?;
                    }
                }
                _ = sync.tick() => self.sync_in_background().await?,
                Some(event) = net.recv() => self.on_net(event)?,
                Some(request) = api.recv() => self.on_api(request),
            }
        }
    }

    /// Starts an fsync of the event log on the blocking pool unless one is still running, and
    /// stops the node if the previous one failed (a failed fsync may have lost data).
    /// Shutdown and snapshots sync on this thread, so nothing is left unsynced at exit.
    async fn sync_in_background(&mut self) -> Result<()> {
        if self.sync_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        if let Some(task) = self.sync_task.take() {
            task.await??;
        }
        self.sync_task = Some(tokio::task::spawn_blocking(self.journal.log().syncer()));
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for (_, handle) in self.conns.drain() {
            if let Some(task) = handle.task {
                task.abort();
            }
        }
        // A snapshot at shutdown makes the next start-up replay nothing.
        self.journal.snapshot(self.clock.now())?;
        Ok(())
    }

    fn on_net(&mut self, event: NetEvent) -> Result<()> {
        match event {
            NetEvent::Incoming { conn, addr, stream } => {
                self.incoming.insert(conn, stream);
                self.feed(Input::Incoming { conn, addr })
            }
            NetEvent::Secured { conn, binding, writer } => {
                let Some(handle) = self.conns.get_mut(&conn) else { return Ok(()) };
                handle.writer = Some(writer);
                self.feed(Input::Secured { conn, binding })
            }
            NetEvent::Received { conn, bytes } => {
                if self.conns.contains_key(&conn) {
                    self.feed(Input::Received { conn, bytes })?;
                }
                Ok(())
            }
            NetEvent::Closed { conn, reason } => {
                if self.conns.remove(&conn).is_some() {
                    self.feed(Input::Closed { conn, reason })?;
                }
                Ok(())
            }
        }
    }

    /// Journals and handles `input`, executes the outputs, and any inputs they cause.
    fn feed(&mut self, input: Input) -> Result<()> {
        self.follow_up.push_back(input);
        while let Some(input) = self.follow_up.pop_front() {
            let mut outputs = std::mem::take(&mut self.outputs);
            self.journal.handle(self.clock.now(), input, &mut outputs)?;
            self.execute_drain(&mut outputs);
            self.outputs = outputs;
        }
        Ok(())
    }

    fn execute(&mut self, mut outputs: Vec<Output>) {
        self.execute_drain(&mut outputs);
    }

    fn execute_drain(&mut self, outputs: &mut Vec<Output>) {
        for output in outputs.drain(..) {
            match output {
                Output::Dial { conn, addr } => {
                    let task = self.transport.spawn_dial(conn, addr);
                    self.conns.insert(conn, ConnHandle { task: Some(task), writer: None });
                }
                Output::Accept { conn } => {
                    if let Some(stream) = self.incoming.remove(&conn) {
                        let task = self.transport.spawn_accept(conn, stream);
                        self.conns.insert(conn, ConnHandle { task: Some(task), writer: None });
                    }
                }
                Output::Send { conn, bytes } => self.send(conn, bytes),
                Output::Close { conn } => {
                    self.incoming.remove(&conn);
                    if let Some(ConnHandle { task: Some(task), .. }) = self.conns.remove(&conn) {
                        task.abort();
                    }
                }
                Output::Event(event) => self.log_event(&event),
            }
        }
    }

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(writer) = self.conns.get(&conn).and_then(|h| h.writer.as_ref()) else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = writer.try_send(bytes) {
            // The peer does not read fast enough; the node must learn the connection is gone.
            if let Some(ConnHandle { task: Some(task), .. }) = self.conns.remove(&conn) {
                task.abort();
            }
            self.follow_up.push_back(Input::Closed { conn, reason: "send queue full: peer too slow".into() });
        }
    }

    fn log_event(&mut self, event: &Event) {
        match event {
            Event::PhaseEntered { phase } => {
                let number = phase_number(*phase);
                if *phase == Phase::Ready {
                    tracing::info!("phase ready: start-up complete");
                } else if *phase != Phase::Failed {
                    tracing::info!("phase {number}/8: {phase}");
                }
            }
            Event::StartupFailed { phase, reason } => {
                tracing::error!("{event}");
                self.failure = Some((*phase, reason.to_string()));
            }
            Event::Initialized { .. } => tracing::info!("{event}"),
            Event::BootstrapFailed { .. } | Event::Penalised { .. } => tracing::warn!("{event}"),
            Event::ConnectionClosed { by_us: true, .. } => tracing::info!("{event}"),
            _ => tracing::info!("{event}"),
        }
    }

    fn on_api(&mut self, request: ApiRequest) {
        let answer = match request.path.as_str() {
            "/status" | "/peers" => (200, self.status_json().to_string()),
            "/config" => (200, serde_json::to_string(self.journal.node().config()).unwrap_or_default()),
            _ => (404, json!({ "error": format!("no such endpoint {}", request.path) }).to_string()),
        };
        let _ = request.reply.send(answer);
    }

    /// Status as JSON (SPEC R10.1, first part).
    pub fn status_json(&self) -> serde_json::Value {
        let now = self.clock.now();
        let status = self.journal.node().status(now);
        json!({
            "node_id": status.node_id,
            "public_key": status.public_key,
            "listen_addr": self.facts.listen_addr,
            "api_addr": self.facts.api_addr,
            "data_dir": self.facts.data_dir,
            "network_id": self.journal.node().config().network_id,
            "phase": status.phase.name(),
            "uptime_s": status.uptime_s,
            "startup_time": self.facts.startup_time_ms,
            "timestamp": now.wall_ms,
            "peer_count": status.peer_count,
            "peers": status.peers.iter().map(|p| json!({
                "node_id": p.node_id,
                "address": p.address,
                "direction": p.direction.to_string(),
                "connected_s": p.connected_s,
                "bootstrap": p.bootstrap,
            })).collect::<Vec<_>>(),
            "known_peers": status.known_peers,
            "connections_handshaking": status.connections_handshaking,
            "counters": status.counters,
            "event_log_next_seq": self.journal.log().next_seq(),
        })
    }
}

/// The 1-based position of a start-up phase (SPEC R1.1).
pub fn phase_number(phase: Phase) -> u8 {
    match phase {
        Phase::CoreCheck => 1,
        Phase::Configuration => 2,
        Phase::Cryptography => 3,
        Phase::NetworkServices => 4,
        Phase::Bootstrap => 5,
        Phase::PeerDiscovery => 6,
        Phase::InitialSync => 7,
        Phase::BackgroundServices => 8,
        Phase::Ready | Phase::Failed => 0,
    }
}
