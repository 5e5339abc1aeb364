//! The production driver: owns the journaled node, executes its outputs with tokio, feeds it
//! network events, timers, API requests and signals.
//!
//! The event log lives on a storage thread ([`GroupCommitLog`]): this thread appends and never
//! waits for the disk. What peers can see of an input (Send, Dial, Accept, Close) waits in
//! `held` until the storage thread reports the input durable; many inputs share one fsync.

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use mynet_core::{ConnId, Event, Input, Mono, Output, Phase, RequestId, StartupFailure, Time};
use mynet_storage::{Durable, EventLog, FjallLog, GroupCommitLog, Journaled};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpStream;

use mynet_core::content::{ContentId, PieceData};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::content::{self, Store};
use crate::durability::Held;
use crate::transport::{self, CLOSE_DRAIN_MAX, NetEvent, Transport};

/// Network events handled in one turn of the loop before timers, durability and the API are
/// looked at again: enough to amortise the turn, few enough to keep the API prompt.
pub const NET_BATCH_MAX: usize = 32;
/// Connections draining their queues after a close at once; beyond this (a burst of closes
/// while peers read slowly) a closed connection is cut without draining.
pub const CLOSING_MAX: usize = 4096;

/// What the storage thread last reported: records before this sequence number are durable, or
/// the log failed.
type DurableReport = Result<u64, String>;

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

/// A question from the local API, answered with an HTTP status and a JSON body. An operator
/// command carries its input (`mynet add/get/rm`), which the node handles before answering.
#[derive(Debug)]
pub struct ApiRequest {
    pub path: String,
    pub input: Option<Input>,
    pub reply: oneshot::Sender<(u16, String)>,
}

struct ConnHandle {
    task: JoinHandle<()>,
    writer: Option<mpsc::Sender<Vec<u8>>>,
    pieces: Option<mpsc::Sender<Vec<u8>>>,
    serving: Arc<Semaphore>,
    /// Answers being read or queued, by request, so a cancel can drop one not yet sent.
    serves: HashMap<RequestId, tokio::task::AbortHandle>,
    /// The node closed it; the close waits for durability, and events for it are dropped.
    closing: bool,
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
    journal: Journaled<GroupCommitLog<FjallLog>>,
    durable: watch::Receiver<DurableReport>,
    /// What peers can see, held until the inputs that caused it are durable.
    held: Held,
    clock: Clock,
    transport: Transport,
    conns: HashMap<ConnId, ConnHandle>,
    incoming: HashMap<ConnId, TcpStream>,
    /// Connections draining after a close, waited for at shutdown.
    closing: JoinSet<()>,
    follow_up: VecDeque<Input>,
    outputs: Vec<Output>,
    facts: Facts,
    failure: Option<(Phase, StartupFailure)>,
    store: Option<Store>,
    store_inputs: mpsc::UnboundedSender<Input>,
    /// Decrypt checks started (SPEC R9), by (original, decrypted form).
    relation_checks: HashMap<(ContentId, ContentId), Instant>,
    last_sweep: Instant,
    /// LAN discovery's sockets, when it is on.
    lan: Option<crate::lan::Lan>,
}

/// How often the driver looks for (original, decrypted form) pairs to check.
const RELATION_SWEEP: Duration = Duration::from_secs(30);
/// A check that gave no verdict (the original unreadable) is tried again after this long.
const RELATION_RETRY: Duration = Duration::from_secs(600);
/// Checks remembered at once.
const RELATION_CHECKS_MAX: usize = 10_000;

impl ConnHandle {
    fn new(task: JoinHandle<()>) -> ConnHandle {
        ConnHandle {
            task,
            writer: None,
            pieces: None,
            serving: Arc::new(Semaphore::new(content::SERVING_PER_CONN_MAX)),
            serves: HashMap::new(),
            closing: false,
        }
    }
}

impl Driver {
    /// A driver for a node that has been created or recovered; `initial` are its first
    /// outputs. Moves the event log to its storage thread.
    pub fn new(
        journal: Journaled<FjallLog>,
        clock: Clock,
        transport: Transport,
        facts: Facts,
        initial: Vec<Output>,
        store: Store,
        store_inputs: mpsc::UnboundedSender<Input>,
    ) -> Result<Driver> {
        let (report, durable) = watch::channel::<DurableReport>(Ok(0));
        let on_durable = move |d: Durable| {
            let _previous = report.send_replace(match d {
                Durable::Before(seq) => Ok(seq),
                Durable::Failed(err) => Err(err.to_string()),
            });
        };
        let mut journal = journal.try_map_log(|log| GroupCommitLog::spawn(log, on_durable))?;
        // Recovery appended the restart (or genesis) without syncing; one fsync before serving.
        journal.log_mut().sync()?;
        let mut driver = Driver {
            journal,
            durable,
            held: Held::default(),
            clock,
            transport,
            conns: HashMap::new(),
            incoming: HashMap::new(),
            closing: JoinSet::new(),
            follow_up: VecDeque::new(),
            outputs: Vec::new(),
            facts,
            failure: None,
            store: Some(store),
            store_inputs,
            relation_checks: HashMap::new(),
            last_sweep: Instant::now(),
            lan: None,
        };
        let needs = driver.journal.log().next_seq();
        for output in initial {
            driver.stage(needs, output);
        }
        driver.reconcile_store()?;
        Ok(driver)
    }

    /// LAN discovery's sockets: the node's announcements go there.
    pub fn with_lan(mut self, lan: Option<crate::lan::Lan>) -> Driver {
        self.lan = lan;
        self
    }

    /// Items complete in the store that the node does not know of (the process died between
    /// an import and its logged input) are handed to the node again, so store and log agree.
    fn reconcile_store(&mut self) -> Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let items = store.shared().items().map_err(|e| anyhow!("reading the content store: {e}"))?;
        for item in items.into_iter().filter(|i| i.complete()) {
            if !self.journal.node().content().holds(&item.id) {
                tracing::info!("item {} is complete in the store but was not in the event log: added", item.id);
                self.feed(Input::Added { id: item.id, size: item.size })?;
            }
        }
        Ok(())
    }

    /// The main loop. Returns when `shutdown` fires (Ok) or start-up fails (Err).
    pub async fn run(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        mut api: mpsc::Receiver<ApiRequest>,
        mut store: mpsc::UnboundedReceiver<Input>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), (Phase, anyhow::Error)> {
        let phase = self.journal.node().phase();
        let result =
            self.main_loop(&mut net, &mut api, &mut store, shutdown).await.map_err(|e| match self.failure.take() {
                Some((failed, reason)) => (failed, anyhow!("{reason}")),
                None => (phase.max(self.journal.node().phase()), e),
            });
        // The storage thread owns the log: wait until it has applied what is queued and closed
        // the log, so the process never exits in the middle of a write.
        if let Some(store) = self.store.take() {
            store.close();
        }
        if let Err(err) = self.journal.into_log().close() {
            tracing::warn!("closing the event log: {err}");
        }
        result
    }

    async fn main_loop(
        &mut self,
        net: &mut mpsc::Receiver<NetEvent>,
        api: &mut mpsc::Receiver<ApiRequest>,
        store: &mut mpsc::UnboundedReceiver<Input>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            if let Some((_, reason)) = &self.failure {
                let reason = reason.to_string();
                self.finish().await?;
                return Err(anyhow!("{reason}"));
            }
            let deadline = self.journal.node().poll_timeout().map(|(at, _)| self.clock.instant_of(at));
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let may_take_net = !self.held.is_full();
            // Everything but network events comes first, and network events come in bounded
            // batches, so a flood cannot starve durability (which releases outputs), deadlines
            // (handshake and request timeouts) or the local API.
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    self.feed(Input::Shutdown)?;
                    return self.finish().await;
                }
                changed = self.durable.changed() => {
                    changed.map_err(|_| anyhow!("event log: the storage thread stopped"))?;
                    self.release()?;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                    if deadline.is_some() {
                        self.feed(Input::Tick)?;
                        self.sweep_relations();
                    }
                }
                // What the store made durable (or found damaged).
                Some(input) = store.recv() => self.feed(input)?,
                Some(request) = api.recv() => self.on_api(request)?,
                Some(event) = net.recv(), if may_take_net => {
                    self.on_net(event)?;
                    for _ in 1..NET_BATCH_MAX {
                        let Ok(event) = net.try_recv() else { break };
                        self.on_net(event)?;
                    }
                }
            }
        }
    }

    /// Ends the run: a snapshot (so the next start-up replays nothing), everything durable,
    /// then the outputs that waited for it (the closes of the shutdown drain their queues).
    async fn finish(&mut self) -> Result<()> {
        self.journal.snapshot(self.clock.now())?;
        // Blocks this thread for one fsync; connections keep running on the workers.
        self.journal.log_mut().sync()?;
        let durable = self.journal.log().next_seq();
        self.release_up_to(durable);
        self.follow_up.clear();
        for (_, handle) in self.conns.drain() {
            handle.task.abort();
        }
        let drained = async { while self.closing.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_DRAIN_MAX, drained).await.is_err() {
            self.closing.abort_all();
        }
        Ok(())
    }

    fn on_net(&mut self, event: NetEvent) -> Result<()> {
        match event {
            NetEvent::Incoming { conn, addr, stream } => {
                self.incoming.insert(conn, stream);
                self.feed(Input::Incoming { conn, addr })
            }
            NetEvent::Secured { conn, binding, writer, pieces } => {
                let Some(handle) = self.conns.get_mut(&conn) else { return Ok(()) };
                handle.writer = Some(writer);
                handle.pieces = Some(pieces);
                if handle.closing {
                    return Ok(());
                }
                self.feed(Input::Secured { conn, binding })
            }
            NetEvent::Received { conn, bytes, credit } => {
                // Taking the event returns the connection's credit.
                drop(credit);
                if self.conns.get(&conn).is_some_and(|h| !h.closing) {
                    self.feed(Input::Received { conn, bytes })?;
                }
                Ok(())
            }
            NetEvent::Piece { conn, request, header, hash, data, credit } => {
                drop(credit);
                if self.conns.get(&conn).is_some_and(|h| !h.closing) {
                    self.feed(Input::Piece { conn, request, header, hash, data: PieceData(data) })?;
                }
                Ok(())
            }
            NetEvent::Closed { conn, reason } => {
                if self.conns.remove(&conn).is_some_and(|h| !h.closing) {
                    self.feed(Input::Closed { conn, reason })?;
                }
                Ok(())
            }
        }
    }

    /// Journals and handles `input` and any inputs it causes; stages their outputs.
    fn feed(&mut self, input: Input) -> Result<()> {
        self.follow_up.push_back(input);
        while let Some(input) = self.follow_up.pop_front() {
            let mut outputs = std::mem::take(&mut self.outputs);
            self.journal.handle(self.clock.now(), input, &mut outputs)?;
            // The input and any checkpoint after it: all must be durable before the outputs go.
            let needs = self.journal.log().next_seq();
            for output in outputs.drain(..) {
                self.stage(needs, output);
            }
            self.outputs = outputs;
        }
        Ok(())
    }

    /// Events are for us and are handled now; what peers can see waits for durability.
    fn stage(&mut self, needs: u64, output: Output) {
        match output {
            Output::Event(event) => self.log_event(&event),
            Output::Close { conn } => {
                // The node has forgotten the connection: what it sends from now on is dropped.
                if let Some(handle) = self.conns.get_mut(&conn) {
                    handle.closing = true;
                }
                self.held.hold(needs, Output::Close { conn });
            }
            visible => self.held.hold(needs, visible),
        }
    }

    /// Releases the outputs whose inputs are now durable; stops the node if the log failed.
    fn release(&mut self) -> Result<()> {
        let durable = self.durable.borrow_and_update().clone().map_err(|e| anyhow!("event log failed: {e}"))?;
        self.release_up_to(durable);
        // A send that found a stuck connection reports it to the node.
        if let Some(input) = self.follow_up.pop_front() {
            self.feed(input)?;
        }
        Ok(())
    }

    fn release_up_to(&mut self, durable: u64) {
        while let Some(output) = self.held.next_released(durable) {
            self.execute(output);
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::Dial { conn, addr } => {
                let task = self.transport.spawn_dial(conn, addr);
                self.conns.insert(conn, ConnHandle::new(task));
            }
            Output::Accept { conn } => {
                if let Some(stream) = self.incoming.remove(&conn) {
                    let task = self.transport.spawn_accept(conn, stream);
                    self.conns.insert(conn, ConnHandle::new(task));
                }
            }
            Output::Send { conn, bytes } => self.send(conn, bytes),
            Output::Close { conn } => {
                self.incoming.remove(&conn);
                if let Some(handle) = self.conns.remove(&conn) {
                    while self.closing.try_join_next().is_some() {}
                    if self.closing.len() < CLOSING_MAX {
                        self.closing.spawn(transport::close_gracefully(handle.task, handle.writer));
                    } else {
                        handle.task.abort();
                    }
                }
            }
            Output::Event(event) => self.log_event(&event),
            Output::StorePiece { piece, data } => self.with_store(|s| s.store_piece(piece, data.0)),
            Output::StoreHead { id, size, cvs } => self.with_store(|s| s.store_head(id, size, cvs)),
            Output::StorePage { id, page, cvs } => self.with_store(|s| s.store_page(id, page, cvs)),
            Output::DeleteItem { id } => self.with_store(|s| s.delete(id)),
            Output::LanAnnounce { bytes } => {
                if let Some(lan) = &self.lan {
                    lan.announce(bytes);
                }
            }
            Output::CancelServe { conn, request } => {
                if let Some(serve) = self.conns.get_mut(&conn).and_then(|h| h.serves.remove(&request)) {
                    serve.abort();
                }
            }
            Output::Serve { conn, request, what } => {
                let Some(handle) = self.conns.get_mut(&conn) else { return };
                let (Some(writer), Some(pieces), Some(store)) = (&handle.writer, &handle.pieces, &self.store) else {
                    return;
                };
                // Forget finished answers (at most the connection's in-flight bound are live).
                handle.serves.retain(|_, task| !task.is_finished());
                let task = tokio::spawn(content::serve(
                    store.shared(),
                    conn,
                    request,
                    what,
                    writer.clone(),
                    pieces.clone(),
                    handle.serving.clone(),
                    self.store_inputs.clone(),
                ));
                handle.serves.insert(request, task.abort_handle());
            }
        }
    }

    fn with_store(&self, f: impl FnOnce(&Store)) {
        if let Some(store) = &self.store {
            f(store);
        }
    }

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(handle) = self.conns.get(&conn) else { return };
        let Some(writer) = handle.writer.as_ref() else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = writer.try_send(bytes) {
            // The peer does not read fast enough; the node must learn the connection is gone.
            let closing = handle.closing;
            if let Some(handle) = self.conns.remove(&conn) {
                handle.task.abort();
            }
            if !closing {
                self.follow_up.push_back(Input::Closed { conn, reason: "send queue full: peer too slow".into() });
            }
        }
    }

    /// SPEC R9's decrypted-form check, for the pairs involving `id` whose original and form are
    /// both held, whose key the registry holds, and that were not checked yet: a blocking task
    /// decrypts the original and reports the verdict as an input (the key never reaches the
    /// node).
    fn check_relations(&mut self, id: ContentId) {
        let node = self.journal.node();
        let catalogue = node.reconcile().catalogue();
        let registry = mynet_storage::keys::KeyRegistry::new(std::path::Path::new(&self.facts.data_dir));
        for (parent, child) in mynet_core::states::States::decrypt_pairs(catalogue, &id) {
            let held = node.content().holds(&parent) && node.content().holds(&child);
            if !held || node.states().verdict(parent, child).is_some() {
                continue;
            }
            // One check at a time per pair; one that gave no verdict is tried again later.
            let now = Instant::now();
            if self.relation_checks.get(&(parent, child)).is_some_and(|at| now.duration_since(*at) < RELATION_RETRY) {
                continue;
            }
            if self.relation_checks.len() >= RELATION_CHECKS_MAX {
                self.relation_checks.retain(|_, at| now.duration_since(*at) < RELATION_RETRY);
                if self.relation_checks.len() >= RELATION_CHECKS_MAX {
                    return;
                }
            }
            self.relation_checks.insert((parent, child), now);
            let key_id = catalogue.get(&parent).and_then(|s| s.meta.key_id.clone()).unwrap_or_default();
            let key = match registry.get(&key_id) {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!("cannot check {child} against {parent}: {err}");
                    continue;
                }
            };
            let (Some(store), inputs) = (self.store.as_ref().map(Store::shared), self.store_inputs.clone()) else {
                return;
            };
            tokio::task::spawn_blocking(move || {
                if let Some(ok) = content::decrypt_check(&store, &key, parent, child) {
                    let _ = inputs.send(Input::RelationChecked { parent, child, ok });
                }
            });
        }
    }

    /// The node's catalogue of signed metadata.
    fn catalogue(&self) -> &mynet_core::reconcile::catalogue::Catalogue {
        self.journal.node().reconcile().catalogue()
    }

    /// Every [`RELATION_SWEEP`], checks the pairs whose metadata arrived after both items were
    /// held (completion and edits trigger the others at once).
    fn sweep_relations(&mut self) {
        if self.last_sweep.elapsed() < RELATION_SWEEP {
            return;
        }
        self.last_sweep = Instant::now();
        let roots: Vec<ContentId> = self
            .catalogue()
            .metas()
            .values()
            .filter(|s| s.meta.state == mynet_core::reconcile::meta::ItemState::Encrypted)
            .map(|s| s.meta.id)
            .collect();
        for id in roots {
            self.check_relations(id);
        }
    }

    fn log_event(&mut self, event: &Event) {
        match event {
            Event::ItemComplete { id, .. } | Event::ItemAdded { id, .. } => {
                tracing::info!("{event}");
                self.check_relations(*id);
            }
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
                self.failure = Some((*phase, reason.clone()));
            }
            Event::Initialized { .. } => tracing::info!("{event}"),
            Event::BootstrapFailed { .. } | Event::Penalised { .. } | Event::RequestTimedOut { .. } => {
                tracing::warn!("{event}")
            }
            // The core bounds what it sends; a refusal is a bug worth an error line.
            Event::SendRefused { .. } => tracing::error!("{event}"),
            // A peer that refused us said why: worth a warning, as the operator may act on it.
            Event::ConnectionClosed { reason: mynet_core::CloseReason::RefusedByPeer { .. }, .. } => {
                tracing::warn!("{event}")
            }
            Event::ConnectionClosed { by_us: true, .. } => tracing::info!("{event}"),
            _ => tracing::info!("{event}"),
        }
    }

    fn on_api(&mut self, request: ApiRequest) -> Result<()> {
        if let Some(input) = request.input {
            let edited = match &input {
                Input::Edit(edit) => Some(edit.id),
                _ => None,
            };
            self.feed(input)?;
            if let Some(id) = edited {
                self.check_relations(id);
            }
        }
        let path = request.path.as_str();
        let answer = match path {
            "/status" | "/peers" => (200, self.status_json().to_string()),
            "/content" => (200, serde_json::to_string(&self.journal.node().items()).unwrap_or_default()),
            _ if path.starts_with("/content/") && path.ends_with("/meta") => self.meta_json(path),
            _ if path.starts_with("/groups/") => {
                let id = path.trim_start_matches("/groups/");
                let group = ContentId::from_hex(id).ok().and_then(|cid| self.journal.node().group(&cid));
                match group {
                    Some(group) => (200, serde_json::to_string(&group).unwrap_or_default()),
                    None => (404, json!({ "error": format!("no item {id} in the catalogue") }).to_string()),
                }
            }
            "/keys" => (200, self.keys_json().to_string()),
            _ if path.starts_with("/content/") => {
                let id = path.trim_start_matches("/content/").split('/').next().unwrap_or_default();
                let item = ContentId::from_hex(id).ok().and_then(|cid| self.journal.node().content().item_status(&cid));
                match item {
                    Some(item) => (200, serde_json::to_string(&item).unwrap_or_default()),
                    None => (404, json!({ "error": format!("no item {id} on this node") }).to_string()),
                }
            }
            "/network" => {
                let status = self.journal.node().status(self.clock.now());
                let body = json!({
                    "max_age_s": mynet_core::netstatus::MAX_AGE_MS / 1000,
                    "interval_s": mynet_core::netstatus::INTERVAL_MS / 1000,
                    "reports": status.network,
                    "broadcast": status.broadcast,
                });
                (200, body.to_string())
            }
            "/config" | "/config/running" => {
                (200, serde_json::to_string(self.journal.node().config()).unwrap_or_default())
            }
            _ => (404, json!({ "error": format!("no such endpoint {}", request.path) }).to_string()),
        };
        let _ = request.reply.send(answer);
        Ok(())
    }

    /// An item's signed metadata (`GET /content/ID/meta`).
    fn meta_json(&self, path: &str) -> (u16, String) {
        let id = path.trim_start_matches("/content/").trim_end_matches("/meta");
        let signed = ContentId::from_hex(id).ok().and_then(|cid| self.journal.node().reconcile().catalogue().get(&cid));
        let Some(signed) = signed.filter(|s| s.meta.is_item()) else {
            return (404, json!({ "error": format!("no item {id} in the catalogue") }).to_string());
        };
        let m = &signed.meta;
        let body = json!({
            "id": m.id, "size": m.size, "pieces": m.pieces,
            "state": mynet_core::states::state_name(m.state),
            "group": m.group, "relations": m.relations.iter().map(|r| json!({"kind": r.kind, "child": r.child})).collect::<Vec<_>>(),
            "tags": m.tags, "key_id": m.key_id,
            "plain_hash": m.plain_hash.map(|h| mynet_core::hex::encode(&h)),
            "version": m.version, "author": m.author,
        });
        (200, body.to_string())
    }

    /// Key records in the catalogue, each with whether it is usable now (`GET /keys`).
    fn keys_json(&self) -> serde_json::Value {
        let now = self.clock.now().wall_ms;
        let records: Vec<_> = self
            .catalogue()
            .metas()
            .values()
            .filter_map(|s| s.meta.key.as_ref().map(|k| (k, s)))
            .map(|(k, s)| {
                let flag = mynet_core::states::key_flag(Some(k), now).map(|f| f.as_str());
                json!({
                    "key_id": k.key_id, "algorithm": k.algorithm, "valid_from_ms": k.valid_from_ms,
                    "valid_until_ms": k.valid_until_ms, "revoked": k.revoked,
                    "status": flag.unwrap_or("valid"), "author": s.meta.author, "version": s.meta.version,
                })
            })
            .collect();
        json!(records)
    }

    /// Status `lan`: the node's counts, and the sockets' interfaces and errors.
    fn lan_json(&self, node: &mynet_core::lan::LanStatus) -> serde_json::Value {
        let mut lan = serde_json::to_value(node).unwrap_or_default();
        let sockets = self.lan.as_ref().map(crate::lan::Lan::state);
        if let (Some(map), Some(sockets)) = (lan.as_object_mut(), sockets) {
            // Active only if some interface was joined: a node whose sockets failed says so.
            map.insert("active".into(), json!(node.active && !sockets.interfaces.is_empty()));
            if let Ok(serde_json::Value::Object(more)) = serde_json::to_value(sockets) {
                map.extend(more);
            }
        } else if let Some(map) = lan.as_object_mut() {
            map.insert("active".into(), json!(false));
            map.insert("interfaces".into(), json!([]));
        }
        lan
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
                "found_by": p.found_by,
            })).collect::<Vec<_>>(),
            "blacklist": status.blacklist,
            "known_peers": status.known_peers,
            "connections_handshaking": status.connections_handshaking,
            "counters": status.counters,
            "requests": status.requests,
            "content": status.content,
            "sync": status.sync,
            "reconcile": status.reconcile,
            "states": status.states,
            "dht": status.dht,
            "lan": self.lan_json(&status.lan),
            "broadcast": status.broadcast,
            "refusals": status.refusals,
            "event_log_next_seq": self.journal.log().next_seq(),
            "event_log_durable_seq": self.durable.borrow().clone().unwrap_or_default(),
            "outputs_awaiting_durability": self.held.len(),
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
