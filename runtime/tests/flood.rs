//! A real node flooded by 50 authenticated peers (real Noise XX, signed Hello, each peer with
//! its own identity and its own loopback address) still answers `GET /status` on its local
//! API within 100 ms; and a peer the node cuts off for flooding still gets every answer the
//! node queued before the close.
//!
//! Each peer churns: connect, handshake, ask as many questions as a connection may ask
//! (core allows 10 a minute per connection), read the answers, hang up, reconnect. That is
//! the heaviest valid load a peer can put on a node: a handshake (X25519, ed25519), a dozen
//! journaled inputs and a dozen answers per cycle.

mod common;
#[allow(dead_code)]
#[path = "../src/noise.rs"]
mod noise;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{RunningNode, configure};
use mynet_core::RequestId;
use mynet_core::discovery;
use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, FrameBuffer, Message, PEERS_PER_ANSWER_MAX, Request};
use mynet_core::{Identity, NodeId, PROTOCOL_VERSION};
use serde_json::json;
use snow::StatelessTransportState;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const PEERS: usize = 50;
const FLOOD: Duration = Duration::from_secs(5);
const API_LATENCY_MAX: Duration = Duration::from_millis(100);
/// Pause between two API probes.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// Questions per connection: core's `REQUESTS_PER_WINDOW_MAX` (more is a flood and a penalty).
const QUESTIONS_PER_CONN: usize = 10;
/// A peer gives up on one step of a session after this long and reconnects.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const NETWORK_ID: &str = "mynet-test";

#[derive(Default)]
struct Traffic {
    handshakes: AtomicU64,
    frames_sent: AtomicU64,
    answers: AtomicU64,
    failed_sessions: AtomicU64,
}

#[test]
fn the_api_answers_within_100ms_while_50_peers_flood_the_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("node");
    configure(&dir, json!({ "max_inbound": 4 * PEERS }), &[]);
    let mut node = RunningNode::start(&dir);
    let status = node.wait_ready(Duration::from_secs(20));
    let node_addr: SocketAddr = status["listen_addr"].as_str().expect("listen addr").parse().expect("addr");
    let api_addr: SocketAddr = read_trimmed(&dir.join("api.addr")).parse().expect("api addr");
    let token = read_trimmed(&dir.join("api.token"));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let traffic = Arc::new(Traffic::default());
    let until = Instant::now() + FLOOD;
    let peers: Vec<_> = (0..PEERS)
        .map(|i| {
            let traffic = traffic.clone();
            runtime.spawn(async move { peer(i, node_addr, until, &traffic).await })
        })
        .collect();
    // Let the flood build up before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let latencies = probe_api(api_addr, &token, until);
    runtime.block_on(async {
        for task in peers {
            let _ = task.await;
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

    let seconds = FLOOD.as_secs_f64();
    let (p50, p99, max) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
    let handshakes = traffic.handshakes.load(Ordering::Relaxed);
    let answers = traffic.answers.load(Ordering::Relaxed);
    eprintln!(
        "flood: {PEERS} peers for {seconds:.0} s: {:.0} handshakes/s, {:.0} frames/s sent, {:.0} answers/s, {} failed sessions",
        handshakes as f64 / seconds,
        traffic.frames_sent.load(Ordering::Relaxed) as f64 / seconds,
        answers as f64 / seconds,
        traffic.failed_sessions.load(Ordering::Relaxed),
    );
    eprintln!(
        "api under flood: {} GET /status, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    assert!(latencies.len() >= 50, "too few API probes ({}) to judge latency", latencies.len());
    assert!(handshakes >= PEERS as u64 && answers > 0, "the flood did not reach the node");
    assert!(p99 < API_LATENCY_MAX, "p99 API latency {p99:?} under flood; log:\n{}", tail(&node.log_text()));
    assert!(node.stop().success(), "clean exit after the flood");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn tail(text: &str) -> String {
    text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn read_trimmed(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).expect("read").trim().to_string()
}

/// GETs /status until `until`; returns the sorted latencies.
fn probe_api(api: SocketAddr, token: &str, until: Instant) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let body = get_status(api, token);
        latencies.push(started.elapsed());
        assert!(body.contains("\"node_id\""), "status answer: {body}");
        std::thread::sleep(PROBE_EVERY);
    }
    latencies.sort();
    latencies
}

fn get_status(api: SocketAddr, token: &str) -> String {
    let mut stream = StdTcpStream::connect_timeout(&api, Duration::from_secs(5)).expect("connect to API");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(stream, "GET /status HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read answer");
    response
}

/// One flooding peer: sessions back to back from its own address until `until`.
async fn peer(index: usize, node: SocketAddr, until: Instant, traffic: &Traffic) {
    let mut secret = [0x42; 32];
    secret[..8].copy_from_slice(&(index as u64).to_be_bytes());
    let identity = Identity::from_secret_bytes(&secret);
    let ip = Ipv4Addr::new(127, 0, 0, 2 + index as u8);
    let static_key = noise::generate_static_key();
    while Instant::now() < until {
        let session = tokio::time::timeout(STEP_TIMEOUT, session(node, ip, &identity, &static_key, traffic));
        if !matches!(session.await, Ok(Ok(()))) {
            traffic.failed_sessions.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Channel {
    stream: TcpStream,
    transport: StatelessTransportState,
    nonce_out: u64,
    nonce_in: u64,
    frames: FrameBuffer,
}

impl Channel {
    async fn send(&mut self, frames: &[Vec<u8>]) -> Result<(), String> {
        let mut sealed = Vec::new();
        for frame in frames {
            sealed.extend(noise::seal_chunks(&self.transport, &mut self.nonce_out, frame).map_err(|e| e.to_string())?);
        }
        self.stream.write_all(&sealed).await.map_err(|e| e.to_string())
    }

    /// Reads messages until `wanted` frames for which `count` holds have arrived.
    async fn read_until(&mut self, wanted: usize, count: impl Fn(&Message) -> bool) -> Result<(), String> {
        let mut seen = 0;
        while seen < wanted {
            let msg = noise::read_msg(&mut self.stream).await.map_err(|e| e.to_string())?;
            let plain = noise::open(&self.transport, self.nonce_in, &msg).map_err(|e| e.to_string())?;
            self.nonce_in += 1;
            let mut bodies = Vec::new();
            self.frames.push(&plain, &mut bodies).map_err(|e| e.to_string())?;
            for body in bodies {
                let message = wire::decode_body(&body).map_err(|e| e.to_string())?;
                seen += usize::from(count(&message));
            }
        }
        Ok(())
    }
}

/// Connects from `ip`, runs Noise XX and the signed Hello, and waits for the node's answer.
async fn connect(node: SocketAddr, ip: Ipv4Addr, identity: &Identity, static_key: &[u8]) -> Result<Channel, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::new(ip.into(), 0)).map_err(|e| e.to_string())?;
    let mut stream = socket.connect(node).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (transport, binding) = noise::handshake(&mut stream, true, static_key).await.map_err(|e| e.to_string())?;
    let mut channel = Channel { stream, transport, nonce_out: 0, nonce_in: 0, frames: FrameBuffer::default() };
    let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let hello = build_hello(identity, Role::Initiator, Binding(binding), NETWORK_ID, PROTOCOL_VERSION, wall_ms, None);
    channel.send(&[wire::encode_frame(&Message::Hello(hello)).map_err(|e| e.to_string())?]).await?;
    channel.read_until(1, |m| matches!(m, Message::HelloAck(_))).await?;
    Ok(channel)
}

fn is_answer(message: &Message) -> bool {
    matches!(message, Message::Response { .. })
}

/// Connect, handshake, every question a connection may ask, the answers, hang up.
async fn session(
    node: SocketAddr,
    ip: Ipv4Addr,
    identity: &Identity,
    static_key: &[u8],
    traffic: &Traffic,
) -> Result<(), String> {
    let mut channel = connect(node, ip, identity, static_key).await?;
    traffic.handshakes.fetch_add(1, Ordering::Relaxed);
    let questions: Vec<Vec<u8>> = (0..QUESTIONS_PER_CONN).map(|i| question_frame(i, identity.node_id())).collect();
    channel.send(&questions).await?;
    traffic.frames_sent.fetch_add(1 + questions.len() as u64, Ordering::Relaxed);
    // The node may ask us too (discovery); only answers to our questions count.
    channel.read_until(questions.len(), is_answer).await?;
    traffic.answers.fetch_add(questions.len() as u64, Ordering::Relaxed);
    // Hang up and wait for the node to close its side, so the next session is not a duplicate
    // of this one.
    let _ = channel.stream.shutdown().await;
    while noise::read_msg(&mut channel.stream).await.is_ok() {}
    Ok(())
}

/// The node answers ten questions, closes the connection at the eleventh (a flood), and the
/// close sends the ten answers already queued before it shuts the socket down: the peer reads
/// them all, then a clean end of stream rather than a reset.
#[test]
fn answers_queued_before_the_node_closes_a_connection_still_arrive() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("node");
    configure(&dir, json!({}), &[]);
    let mut node = RunningNode::start(&dir);
    let status = node.wait_ready(Duration::from_secs(20));
    let node_addr: SocketAddr = status["listen_addr"].as_str().expect("listen addr").parse().expect("addr");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (answers, end) = runtime.block_on(async {
        let identity = Identity::from_secret_bytes(&[0x17; 32]);
        let mut channel =
            connect(node_addr, Ipv4Addr::LOCALHOST, &identity, &noise::generate_static_key()).await.expect("handshake");
        let questions: Vec<Vec<u8>> = (0..=QUESTIONS_PER_CONN).map(|i| question_frame(i, identity.node_id())).collect();
        channel.send(&questions).await.expect("send");
        let mut answers = 0;
        let end = loop {
            let read = tokio::time::timeout(STEP_TIMEOUT, channel.read_until(1, is_answer)).await;
            match read {
                Ok(Ok(())) => answers += 1,
                Ok(Err(end)) => break end,
                Err(_) => break "timed out".to_string(),
            }
        };
        (answers, end)
    });
    assert_eq!(answers, QUESTIONS_PER_CONN, "every answer queued before the close arrived (then: {end})");
    assert_eq!(end, "connection closed by peer", "the node shut the socket down cleanly");
    node.wait_log("request flood", Duration::from_secs(5));
    assert!(node.stop().success());
}

/// The post-handshake frames this test sends (the only place that builds them): question
/// `i` of a connection, alternating between the two questions a peer may ask.
fn question_frame(i: usize, me: NodeId) -> Vec<u8> {
    let body = if i.is_multiple_of(2) {
        discovery::Request::GetNetworkInfo
    } else {
        discovery::Request::DiscoverPeers { node_id: me, max_peers: PEERS_PER_ANSWER_MAX as u16, exclude: Vec::new() }
    };
    let message = Message::Request { id: RequestId(i as u32), body: Request::Discovery(body) };
    wire::encode_frame(&message).expect("a question fits a frame")
}
