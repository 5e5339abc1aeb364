//! `mynet replay`: run a node's event log through a fresh node and check its checkpoints.
//!
//! With `--events` (narrowed by `--kind` and `--peer`) it prints every record with the outputs it
//! produced and the wire messages inside; `--state` prints the node's state at the stop point;
//! `mynet replay diff A B` steps two logs side by side and names the first input where they part.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use mynet_core::dht::proto as dht;
use mynet_core::discovery;
use mynet_core::hex;
use mynet_core::penalties::Offender;
use mynet_core::reconcile::proto as reconcile;
use mynet_core::wire::{FrameBuffer, Message, PeerRecord, Request, Response, WireError, decode_body};
use mynet_core::{ConnId, Event, Identity, Input, Node, NodeId, Output};
use mynet_storage::log::{EventLog, LogRecord, StorageError, read_records_from};
use mynet_storage::{FjallLog, ReplayReport, Start, keyfile};
use serde_json::{Value, json};

use crate::datadir::DataDir;

/// Record kinds `--kind` accepts: the input kinds of `Input::kind`, and the two other records.
const KINDS: [&str; 23] = [
    "genesis",
    "incoming",
    "secured",
    "received",
    "closed",
    "tick",
    "restart",
    "shutdown",
    "piece",
    "stored",
    "store_failed",
    "added",
    "want",
    "remove",
    "describe",
    "damaged",
    "edit",
    "key_edit",
    "relation_checked",
    "lookup",
    "lan_heard",
    "configure",
    "checkpoint",
];
/// Longest JSON value a diff prints before cutting it short.
const VALUE_SHOWN_MAX: usize = 160;
/// Peers of a `peers` or `network_info` message listed by id; the rest are counted.
const PEERS_LISTED: usize = 3;

/// Options of `mynet replay`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    command: Option<ReplayCommand>,
    /// Stop after the record with this sequence number.
    #[arg(long)]
    until: Option<u64>,
    /// Print every record and the outputs it produced, with the wire messages decoded.
    #[arg(long)]
    events: bool,
    /// Print only records of this kind (repeatable; implies --events).
    #[arg(long = "kind", value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(KINDS))]
    kinds: Vec<String>,
    /// Print only records that mention this peer: a connection id (in#3, out#5), a node id
    /// prefix (at least 4 hex digits) or part of an address (10.0.0.3, :7401). Implies --events.
    #[arg(long, value_name = "P")]
    peer: Option<String>,
    /// Print the node's state as JSON at the stop point.
    #[arg(long)]
    state: bool,
}

/// Subcommands of `mynet replay`.
#[derive(clap::Subcommand, Debug)]
enum ReplayCommand {
    /// Replay two data dirs' logs side by side; report the first input where the inputs, the
    /// outputs or the node states differ. Exit 0 when identical to the end, 1 otherwise.
    Diff {
        /// The first data dir (holds `events/` and `node.key`).
        a: PathBuf,
        /// The second data dir.
        b: PathBuf,
    },
}

/// Runs the replay; exit 0 when every checkpoint was reproduced, 1 on divergence or error.
pub fn run(dir: &DataDir, args: &ReplayArgs) -> ExitCode {
    let result = match &args.command {
        Some(ReplayCommand::Diff { a, b }) => diff::diff(a, b),
        None => replay(dir, args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn replay(dir: &DataDir, args: &ReplayArgs) -> Result<bool> {
    let filter = Filter::from_args(args)?;
    let (log, identity) = open_data_dir(dir)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let started = Instant::now();
    let mut printed = Ok(());
    let (report, node) = match filter {
        // Without --events the observer does nothing, so replay runs at full speed.
        None => mynet_storage::replay(&log, &identity, Start::Earliest, args.until, None)?,
        Some(filter) => {
            let mut printer = Printer { filter, describer: Describer::default(), error: None };
            let mut observer = |seq: u64, record: &LogRecord, outputs: &[Output], _: &Node| {
                printer.observe(&mut out, seq, record, outputs);
            };
            let replayed = mynet_storage::replay(&log, &identity, Start::Earliest, args.until, Some(&mut observer))?;
            printed = printer.error.map_or(Ok(()), Err);
            replayed
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(divergence) = &report.divergence {
        eprintln!("replay diverged: {divergence}");
    }
    let written = printed.and_then(|()| write_end(&mut out, args, &report, node.as_ref(), elapsed));
    match written {
        // The reader went away (`| head`): nothing more to say to it.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing to stdout")?,
    }
    Ok(report.divergence.is_none())
}

/// The `--state` JSON and the one-line summary that always ends stdout.
fn write_end(
    out: &mut impl Write,
    args: &ReplayArgs,
    report: &ReplayReport,
    node: Option<&Node>,
    elapsed: f64,
) -> io::Result<()> {
    if args.state
        && let Some(node) = node
    {
        writeln!(out, "{}", serde_json::to_string_pretty(&readable_state(node)).map_err(io::Error::other)?)?;
    }
    let summary = json!({
        "records": report.records,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "restarts": report.restarts,
        "outputs": report.outputs,
        "from_snapshot": report.from_snapshot,
        "stopped_at": report.stopped_at,
        "wall_time_s": elapsed,
        "events_per_s": if elapsed > 0.0 { (report.events as f64 / elapsed).round() } else { 0.0 },
        "reproduced": report.divergence.is_none(),
        "divergence": report.divergence.as_ref().map(|d| d.to_string()),
    });
    writeln!(out, "{summary}")?;
    out.flush()
}

/// The log and key of a data dir.
fn open_data_dir(dir: &DataDir) -> Result<(FjallLog, Identity)> {
    let log_path = dir.log_path();
    if !log_path.is_dir() {
        bail!("no event log at {} (is {} a node's data dir?)", log_path.display(), dir.root().display());
    }
    let identity = keyfile::load_key(&dir.key_path())?;
    let log =
        FjallLog::open(&log_path).map_err(|e| anyhow!("{e}; if a node is running on this data dir, stop it first"))?;
    Ok((log, identity))
}

// ---- what --events prints ----

/// Which records `--events` prints.
struct Filter {
    kinds: Vec<String>,
    peer: Option<PeerFilter>,
}

impl Filter {
    /// `None` when no record is to be printed.
    fn from_args(args: &ReplayArgs) -> Result<Option<Filter>> {
        if !args.events && args.kinds.is_empty() && args.peer.is_none() {
            return Ok(None);
        }
        let peer = args.peer.as_deref().map(PeerFilter::parse).transpose()?;
        Ok(Some(Filter { kinds: args.kinds.clone(), peer }))
    }

    fn wants(&self, described: &Described) -> bool {
        let kind = self.kinds.is_empty() || self.kinds.iter().any(|k| k == described.kind);
        kind && self.peer.as_ref().is_none_or(|p| p.matches(&described.mentions))
    }
}

/// `--peer`: a connection id, or a node id prefix and/or part of an address.
struct PeerFilter {
    conn: Option<ConnId>,
    id_prefix: Option<String>,
    addr: String,
}

impl PeerFilter {
    fn parse(text: &str) -> Result<PeerFilter> {
        let text = text.trim();
        if text.is_empty() {
            bail!("--peer needs a connection id (in#3, out#5), a node id prefix or part of an address");
        }
        let conn = match (text.strip_prefix("in#"), text.strip_prefix("out#")) {
            (Some(n), _) => Some(n.parse().map(ConnId::inbound)),
            (_, Some(n)) => Some(n.parse().map(ConnId)),
            _ => None,
        };
        let conn = conn.transpose().map_err(|_| anyhow!("--peer {text:?}: a connection id is in#N or out#N"))?;
        let hex = text.len() >= 4 && text.chars().all(|c| c.is_ascii_hexdigit());
        Ok(PeerFilter { conn, id_prefix: hex.then(|| text.to_ascii_lowercase()), addr: text.to_string() })
    }

    fn matches(&self, mentions: &Mentions) -> bool {
        if let Some(conn) = self.conn {
            return mentions.conns.contains(&conn);
        }
        let by_id = self
            .id_prefix
            .as_deref()
            .is_some_and(|prefix| mentions.ids.iter().any(|id| id.to_string().starts_with(prefix)));
        by_id || mentions.addrs.iter().any(|addr| addr.contains(&self.addr))
    }
}

/// Prints the records the filter wants; remembers the first write error and stops printing.
struct Printer {
    filter: Filter,
    describer: Describer,
    error: Option<io::Error>,
}

impl Printer {
    fn observe(&mut self, out: &mut impl Write, seq: u64, record: &LogRecord, outputs: &[Output]) {
        if self.error.is_some() {
            return;
        }
        let described = self.describer.describe(seq, record, outputs);
        if !self.filter.wants(&described) {
            return;
        }
        if let Err(err) = described.lines.iter().try_for_each(|line| writeln!(out, "{line}")) {
            self.error = Some(err);
        }
    }
}

/// Connections, node ids and addresses a record mentions (for `--peer`).
#[derive(Default)]
struct Mentions {
    conns: Vec<ConnId>,
    ids: Vec<NodeId>,
    addrs: Vec<String>,
}

/// One record as text: its line, then one indented line per output.
struct Described {
    kind: &'static str,
    lines: Vec<String>,
    mentions: Mentions,
}

/// What a connection is known to lead to, from its dial or accept and the peer's hello.
#[derive(Clone, Default)]
struct ConnInfo {
    addr: Option<SocketAddr>,
    node: Option<NodeId>,
}

/// Turns records into text. Keeps one frame buffer per connection, since a received chunk may
/// hold several frames or part of one, and what each connection leads to, so `--peer` with a
/// node id or address also finds the connection's later traffic.
#[derive(Default)]
struct Describer {
    frames: BTreeMap<ConnId, FrameBuffer>,
    conns: BTreeMap<ConnId, ConnInfo>,
}

impl Describer {
    fn describe(&mut self, seq: u64, record: &LogRecord, outputs: &[Output]) -> Described {
        let mut mentions = Mentions::default();
        let (kind, head) = match record {
            LogRecord::Genesis { node_id, rng_seed, time, .. } => {
                mentions.ids.push(*node_id);
                ("genesis", format!("#{seq} t={} genesis node {node_id} seed {rng_seed}", secs(time.mono.0)))
            }
            LogRecord::Input { time, input } => {
                let detail = self.describe_input(input, &mut mentions);
                let sep = if detail.is_empty() { "" } else { " " };
                (input.kind(), format!("#{seq} t={} {}{sep}{detail}", secs(time.mono.0), input.kind()))
            }
            LogRecord::Checkpoint { state_hash, output_hash, outputs_total } => (
                "checkpoint",
                format!(
                    "#{seq} checkpoint state {} output {} ({outputs_total} outputs)",
                    short_hash(state_hash),
                    short_hash(output_hash)
                ),
            ),
        };
        let mut lines = vec![head];
        for output in outputs {
            lines.push(format!("    {}", self.describe_output(output, &mut mentions)));
        }
        self.expand(&mut mentions);
        self.forget_closed(record, outputs);
        Described { kind, lines, mentions }
    }

    fn describe_input(&mut self, input: &Input, mentions: &mut Mentions) -> String {
        match input {
            Input::Incoming { conn, addr } => {
                mentions.conns.push(*conn);
                mentions.addrs.push(addr.to_string());
                self.conns.entry(*conn).or_default().addr = Some(*addr);
                format!("{conn} from {addr}")
            }
            Input::Secured { conn, .. } => {
                mentions.conns.push(*conn);
                conn.to_string()
            }
            Input::Received { conn, bytes } => {
                mentions.conns.push(*conn);
                format!("{conn} {} bytes: {}", bytes.len(), self.decode_received(*conn, bytes, mentions))
            }
            Input::Closed { conn, reason } => {
                mentions.conns.push(*conn);
                format!("{conn}: {reason}")
            }
            Input::Restart { rng_seed, .. } => format!("seed {rng_seed}"),
            Input::Tick | Input::Shutdown => String::new(),
            Input::Piece { conn, request, header, hash, .. } => {
                mentions.conns.push(*conn);
                let hash = mynet_core::hex::encode(&hash[..8]);
                format!("{conn} piece {} of {} (request {request}, hash {hash}..)", header.index, header.id)
            }
            Input::Stored { pieces } => describe_pieces("durable", pieces),
            Input::StoreFailed { pieces, error } => format!("{}: {error}", describe_pieces("failed", pieces)),
            Input::Added { id, size } => format!("{id} ({size} bytes)"),
            Input::Want { id } | Input::Remove { id } => id.to_string(),
            Input::Describe { id, tags, .. } => format!("{id} tags {}", tags.join(",")),
            Input::Damaged { piece } => format!("piece {} of {}", piece.index, piece.id),
            Input::Lookup { target } => {
                mentions.ids.push(*target);
                format!("lookup of {}", target.short())
            }
            Input::Edit(edit) => {
                let key = edit.key_id.as_deref().map_or(String::new(), |k| format!(" key {k}"));
                let group = edit.group.map_or(String::new(), |g| {
                    format!(" group {g} as {}", edit.relation.as_deref().unwrap_or("member"))
                });
                format!("{}{key}{group} tags {}", edit.id, edit.tags.join(","))
            }
            Input::KeyEdit(edit) => {
                let until = edit.valid_until_ms.map_or("no end".to_string(), |u| format!("until {u} ms"));
                format!("key record {} ({until}{})", edit.key_id, if edit.revoked { ", revoked" } else { "" })
            }
            Input::RelationChecked { parent, child, ok } => {
                format!("decrypting {parent} {} {child}", if *ok { "gives" } else { "does not give" })
            }
            Input::Configure { config } => {
                let values = serde_json::to_value(config.as_ref()).unwrap_or_default();
                let fields: Vec<String> = mynet_core::config::LIVE_FIELDS
                    .iter()
                    .filter_map(|f| values.get(f).map(|v| format!("{f}={v}")))
                    .collect();
                format!("operator config (live fields): {}", fields.join(" "))
            }
            Input::LanHeard { from, bytes } => {
                mentions.addrs.push(from.to_string());
                format!("from {from}: {}", describe_announcement(bytes, mentions))
            }
        }
    }

    /// Feeds received bytes to the connection's frame buffer and describes the whole frames.
    fn decode_received(&mut self, conn: ConnId, bytes: &[u8], mentions: &mut Mentions) -> String {
        let mut frames = Vec::new();
        let buffer = self.frames.entry(conn).or_default();
        let pushed = buffer.push(bytes, &mut frames);
        let buffered = buffer.buffered_len();
        if pushed.is_err() {
            self.frames.remove(&conn);
        }
        let messages: Vec<Result<Message, WireError>> = frames.iter().map(|f| decode_body(f)).collect();
        for message in messages.iter().flatten() {
            let node = match message {
                Message::Hello(hello) | Message::HelloAck(hello) => Some(hello.node_id),
                Message::Refused(refusal) => Some(refusal.node_id),
                _ => None,
            };
            if let Some(node) = node {
                self.conns.entry(conn).or_default().node = Some(node);
            }
        }
        let mut parts: Vec<String> = messages.iter().map(|m| describe_decoded(m, mentions)).collect();
        match pushed {
            Err(err) => parts.push(format!("bad frame: {err}")),
            Ok(()) if buffered > 0 => parts.push(format!("{buffered} bytes of a partial frame")),
            Ok(()) => {}
        }
        parts.join("; ")
    }

    fn describe_output(&mut self, output: &Output, mentions: &mut Mentions) -> String {
        match output {
            Output::Dial { conn, addr } => {
                mentions.conns.push(*conn);
                mentions.addrs.push(addr.to_string());
                self.conns.entry(*conn).or_default().addr = Some(*addr);
                format!("dial {conn} {addr}")
            }
            Output::Accept { conn } => {
                mentions.conns.push(*conn);
                format!("accept {conn}")
            }
            Output::Send { conn, bytes } => {
                mentions.conns.push(*conn);
                format!("send {conn} {} bytes: {}", bytes.len(), describe_sent(bytes, mentions))
            }
            Output::Close { conn } => {
                mentions.conns.push(*conn);
                format!("close {conn}")
            }
            Output::Event(event) => {
                event_mentions(event, mentions);
                format!("event: {event}")
            }
            Output::StorePiece { piece, .. } => format!("store piece {} of {}", piece.index, piece.id),
            Output::StoreHead { id, size, cvs } => format!("store head of {id} ({size} bytes, {} entries)", cvs.len()),
            Output::StorePage { id, page, .. } => format!("store page {page} of {id}"),
            Output::Serve { conn, request, what } => {
                mentions.conns.push(*conn);
                format!("serve {what:?} on {conn} (request {request})")
            }
            Output::DeleteItem { id } => format!("delete {id}"),
            Output::CancelServe { conn, request } => {
                mentions.conns.push(*conn);
                format!("cancel serving request {request} on {conn}")
            }
            Output::LanAnnounce { bytes } => format!("LAN announce: {}", describe_announcement(bytes, mentions)),
        }
    }

    /// Adds what each mentioned connection leads to.
    fn expand(&self, mentions: &mut Mentions) {
        let Mentions { conns, ids, addrs } = mentions;
        for info in conns.iter().filter_map(|c| self.conns.get(c)) {
            addrs.extend(info.addr.map(|a| a.to_string()));
            ids.extend(info.node);
        }
    }

    /// Drops the frame buffers of closed connections; a restart drops every connection.
    fn forget_closed(&mut self, record: &LogRecord, outputs: &[Output]) {
        let LogRecord::Input { input, .. } = record else { return };
        if let Input::Restart { .. } = input {
            self.frames.clear();
            self.conns.clear();
            return;
        }
        if let Input::Closed { conn, .. } = input {
            self.frames.remove(conn);
        }
        for output in outputs {
            if let Output::Close { conn } = output {
                self.frames.remove(conn);
            }
        }
    }
}

fn describe_pieces(what: &str, pieces: &[mynet_core::content::PieceRef]) -> String {
    let listed: Vec<String> = pieces.iter().take(4).map(|p| format!("{}#{}", p.id, p.index)).collect();
    let more = if pieces.len() > 4 { format!(" +{} more", pieces.len() - 4) } else { String::new() };
    format!("{} {what}: {}{more}", pieces.len(), listed.join(", "))
}

/// Describes the frames of a `Send` output (always whole frames).
fn describe_sent(bytes: &[u8], mentions: &mut Mentions) -> String {
    let mut frames = Vec::new();
    let mut buffer = FrameBuffer::default();
    let pushed = buffer.push(bytes, &mut frames);
    let mut parts: Vec<String> = frames.iter().map(|f| describe_decoded(&decode_body(f), mentions)).collect();
    match pushed {
        Err(err) => parts.push(format!("bad frame: {err}")),
        Ok(()) if buffer.buffered_len() > 0 => {
            parts.push(format!("{} bytes of a partial frame", buffer.buffered_len()))
        }
        Ok(()) => {}
    }
    parts.join("; ")
}

fn describe_decoded(message: &Result<Message, WireError>, mentions: &mut Mentions) -> String {
    match message {
        Ok(message) => describe_message(message, mentions),
        Err(err) => format!("undecodable frame: {err}"),
    }
}

/// A message's name and key fields.
fn describe_message(message: &Message, mentions: &mut Mentions) -> String {
    match message {
        Message::Hello(hello) | Message::HelloAck(hello) => {
            let name = if matches!(message, Message::Hello(_)) { "hello" } else { "hello_ack" };
            mentions.ids.push(hello.node_id);
            mentions.addrs.extend(hello.listen_addr.map(|a| a.to_string()));
            let listen = hello.listen_addr.map_or("none".to_string(), |a| a.to_string());
            format!(
                "{name} from {} (network {} {}, listen {listen})",
                hello.node_id.short(),
                hello.network_id,
                hello.network_version
            )
        }
        Message::Request { id, body: Request::Discovery(request) } => match request {
            discovery::Request::GetNetworkInfo => format!("get_network_info {id}"),
            discovery::Request::DiscoverPeers { node_id, max_peers, exclude } => {
                mentions.ids.push(*node_id);
                format!("discover_peers {id} from {} (max {max_peers}, exclude {})", node_id.short(), exclude.len())
            }
        },
        Message::Response { id, body: Response::Discovery(response) } => match response {
            discovery::Response::NetworkInfo(info) => format!(
                "network_info {id}: {}, {} connected / {} known there, up {}s, {} content",
                list_peers(&info.peers, mentions),
                info.stats.connected_peers,
                info.stats.known_peers,
                info.stats.uptime_s,
                info.popular_content.len()
            ),
            discovery::Response::Peers(peers) => format!("{} {id}", list_peers(peers, mentions)),
        },
        Message::Request { id, body: Request::Content(request) } => format!("{} {id}: {request:?}", request.kind()),
        Message::Response { id, body: Response::Content(response) } => match response {
            mynet_core::content::proto::Response::Head { size, cvs } => {
                format!("head {id}: {size} bytes, {} entries", cvs.len())
            }
            mynet_core::content::proto::Response::Page { cvs } => format!("page {id}: {} entries", cvs.len()),
            other => format!("{} {id}", other.kind()),
        },
        Message::Request { id, body: Request::Status(mynet_core::netstatus::Request::Report(r)) } => {
            mentions.ids.push(r.node_id);
            format!(
                "status_report {id} from {} #{}: {}, {} peers, {} items, {} bytes",
                r.node_id.short(),
                r.seq,
                r.phase.name(),
                r.peers,
                r.items,
                r.bytes_stored
            )
        }
        Message::Response { id, body: Response::Status(_) } => format!("status_noted {id}"),
        Message::Request { id, body: Request::Reconcile(request) } => describe_reconcile_request(*id, request),
        Message::Response { id, body: Response::Reconcile(response) } => describe_reconcile_response(*id, response),
        Message::Request { id, body: Request::Dht(request) } => match request {
            dht::Request::FindNode { target } => format!("find_node {id}: {}", target.short()),
            dht::Request::GetProviders { key } => format!("get_providers {id}: {}", hex::encode(&key[..4])),
            dht::Request::AddProviders { keys } => format!("add_providers {id}: {} items", keys.len()),
        },
        Message::Response { id, body: Response::Dht(response) } => match response {
            dht::Response::Nodes(nodes) => format!("nodes {id}: {}", list_peers(nodes, mentions)),
            dht::Response::Providers { providers, closer } => format!(
                "providers {id}: {} providers ({}), {} closer",
                providers.len(),
                list_peers(providers, mentions),
                closer.len()
            ),
            dht::Response::Added { stored } => format!("added {id}: {stored} stored"),
        },
        Message::Piece { id, header } => format!("piece {id}: {} of {}", header.index, header.id),
        Message::Cancel { id } => format!("cancel {id}"),
        Message::Refused(refusal) => {
            mentions.ids.push(refusal.node_id);
            format!(
                "connection_refused by {}: {} ({})",
                refusal.node_id.short(),
                refusal.reason,
                mynet_core::refusal::RetryHint(refusal.retry_after_ms)
            )
        }
    }
}

fn describe_reconcile_request(id: mynet_core::request::RequestId, request: &reconcile::Request) -> String {
    match request {
        reconcile::Request::Start { count, .. } => format!("reconcile {id}: {count} items"),
        reconcile::Request::Cells { from, to } => format!("get_cells {id}: {from}..{to}"),
        reconcile::Request::Keys { after } => {
            format!("get_keys {id} after {}", after.map_or("the start".to_string(), |a| a.to_string()))
        }
        reconcile::Request::Get { ids } => format!("get_meta {id}: {} items", ids.len()),
        reconcile::Request::Offer { metas } => format!("offer {id}: {} items", metas.len()),
    }
}

fn describe_reconcile_response(id: mynet_core::request::RequestId, response: &reconcile::Response) -> String {
    match response {
        reconcile::Response::Equal => format!("equal {id}"),
        reconcile::Response::Differs { count, len, counts, .. } => {
            format!("differs {id}: {count} items there, {len} cells, {} counts", counts.len())
        }
        reconcile::Response::Cells { cells } => format!("cells {id}: {}", cells.len()),
        reconcile::Response::Keys { keys, more } => {
            format!("keys {id}: {}{}", keys.len(), if *more { ", more" } else { "" })
        }
        reconcile::Response::Metas { metas, answered } => format!("metas {id}: {} of {answered} asked", metas.len()),
        reconcile::Response::Taken { refused, reason } => match reason {
            Some(reason) => format!("taken {id}: {refused} refused ({})", reason.as_str()),
            None => format!("taken {id}"),
        },
        reconcile::Response::Refused { reason } => format!("refused {id}: {reason:?}"),
    }
}

/// `peers (N): id@addr, ...` with the first few listed.
fn list_peers(peers: &[PeerRecord], mentions: &mut Mentions) -> String {
    for peer in peers {
        mentions.ids.push(peer.node_id);
        mentions.addrs.push(peer.address.to_string());
    }
    let mut listed: Vec<String> =
        peers.iter().take(PEERS_LISTED).map(|p| format!("{}@{}", p.node_id.short(), p.address)).collect();
    if peers.len() > PEERS_LISTED {
        listed.push(format!("+{} more", peers.len() - PEERS_LISTED));
    }
    if listed.is_empty() {
        format!("peers ({})", peers.len())
    } else {
        format!("peers ({}): {}", peers.len(), listed.join(", "))
    }
}

fn event_mentions(event: &Event, mentions: &mut Mentions) {
    match event {
        Event::BootstrapConnected { node_id, addr }
        | Event::BootstrapFailed { node_id, addr, .. }
        | Event::PeerConnected { node_id, addr, .. } => {
            mentions.ids.push(*node_id);
            mentions.addrs.push(addr.to_string());
        }
        Event::ConnectionClosed { conn, addr, peer, .. } => {
            mentions.conns.push(*conn);
            mentions.addrs.push(addr.to_string());
            mentions.ids.extend(*peer);
        }
        Event::NetworkInfoReceived { from, .. } | Event::PeersLearned { from, .. } => mentions.ids.push(*from),
        Event::Penalised { offender: Offender::Node(id), .. } => mentions.ids.push(*id),
        Event::Penalised { offender: Offender::Ip(ip), .. } => mentions.addrs.push(ip.to_string()),
        _ => {}
    }
}

/// Microseconds as seconds with six decimals.
fn secs(us: u64) -> String {
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

fn short_hash(hash: &[u8; 32]) -> String {
    mynet_core::hex::encode(&hash[..8])
}

/// `Node::state_json` with connection ids written as they are printed (`in#3`, `out#5`).
fn readable_state(node: &Node) -> Value {
    let mut state = node.state_json();
    let conn_name = |text: &str| text.parse::<u64>().map(|n| ConnId(n).to_string()).ok();
    for path in [&["conns", "table"][..], &["requests", "peers"][..]] {
        if let Some(Value::Object(conns)) = path.iter().try_fold(&mut state, |v, key| v.get_mut(*key)) {
            let named = std::mem::take(conns).into_iter().map(|(k, v)| (conn_name(&k).unwrap_or(k), v));
            conns.extend(named);
        }
    }
    if let Some(Value::Array(awaiting)) = state.get_mut("discovery").and_then(|d| d.get_mut("awaiting")) {
        for item in awaiting.iter_mut() {
            if let Some(n) = item.as_u64() {
                *item = Value::String(ConnId(n).to_string());
            }
        }
    }
    state
}

mod diff;

/// Writes a simulated node's log and key as a data dir that `mynet replay` reads.
pub fn dump_sim_log(world: &mynet_sim::World, node: usize, path: &Path) -> Result<()> {
    let source = world.memory_log(node).context("that node's log was not kept")?;
    let dir = DataDir::new(path);
    dir.ensure()?;
    if dir.log_path().exists() {
        bail!("{} already holds an event log; choose an empty directory", path.display());
    }
    let key = world.identity(node).secret_bytes();
    keyfile::load_or_create_key(&dir.key_path(), || key)?;
    let mut log = FjallLog::open(&dir.log_path())?;
    log.import(source)?;
    Ok(())
}

/// A LAN announcement, decoded (or why it does not decode).
fn describe_announcement(bytes: &[u8], mentions: &mut Mentions) -> String {
    match mynet_core::lan::Announcement::decode(bytes) {
        Ok(a) => {
            mentions.ids.push(a.node_id);
            format!("{} on {} at {} (wall {} ms)", a.node_id.short(), a.network_id, a.listen_addr, a.timestamp_ms)
        }
        Err(why) => format!("{} bytes, {why}", bytes.len()),
    }
}
