//! TCP connections with Noise, one task per connection, reporting to the driver by channel.
//!
//! Connection tasks run on the runtime's worker threads, so encryption and decryption run in
//! parallel with the node. Each connection may have at most [`CONN_EVENTS_MAX`] events
//! waiting for the driver: a reader takes a credit before it reads from the socket and the
//! driver returns it when it takes the event, so one busy peer cannot fill the shared queue
//! ahead of the others, and a peer that sends faster than the node handles is slowed by TCP.

use core::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mynet_core::ConnId;
use mynet_core::content::stream::{Part, Splitter, piece_hash};
use mynet_core::handshake::Binding;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::accept::Acceptor;
use crate::noise::{self, NoiseError};

/// Frames queued for one connection's writer before the connection counts as stuck.
pub const WRITE_QUEUE_MAX: usize = 256;
/// Bytes a connection's reader takes from the socket at once.
pub const READ_BUFFER: usize = 256 * 1024;
/// Pieces (1 MiB each) queued for one connection's writer, besides the one it writes. One: a
/// piece read for serving waits in its task, where a `Cancel` can still drop it (the serving
/// tasks keep the next pieces read, so the writer never waits for the disk).
pub const PIECES_QUEUED_MAX: usize = 1;
/// Events queued from all connections to the driver (back-pressure on readers).
pub const NET_EVENTS_MAX: usize = 1024;
/// Received messages of one connection waiting for the driver; its reader waits for a credit
/// before reading more.
pub const CONN_EVENTS_MAX: usize = 8;
/// How long a connection closed for an orderly reason has to send what was queued for it (and
/// to see the peer close its side) before it is cut.
pub const CLOSE_DRAIN_MAX: Duration = Duration::from_secs(2);

/// What the network tells the driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A TCP connection arrived; the node decides whether to accept it.
    Incoming { conn: ConnId, addr: SocketAddr, stream: TcpStream },
    /// The Noise handshake finished; frames for the peer go to `writer`, pieces served to it
    /// to `pieces` (a short queue of its own: at most [`PIECES_QUEUED_MAX`] MiB waiting).
    Secured { conn: ConnId, binding: Binding, writer: mpsc::Sender<Vec<u8>>, pieces: mpsc::Sender<Vec<u8>> },
    /// Decrypted control frames; dropping `credit` lets the connection's reader read on.
    Received { conn: ConnId, bytes: Vec<u8>, credit: OwnedSemaphorePermit },
    /// A whole piece split out of the stream and hashed on this connection's task.
    Piece {
        conn: ConnId,
        request: mynet_core::RequestId,
        header: mynet_core::content::proto::PieceHeader,
        hash: [u8; 32],
        data: Vec<u8>,
        credit: OwnedSemaphorePermit,
    },
    /// The connection ended (dial failure, handshake failure, EOF, I/O error).
    Closed { conn: ConnId, reason: String },
}

/// Ends a connection for an orderly reason: its writer sends what is queued and then shuts
/// the socket down; after [`CLOSE_DRAIN_MAX`] the task is cut regardless. Without a writer
/// (the Noise handshake is still running) nothing is queued and the task is cut at once.
/// Completes when the connection is gone.
pub async fn close_gracefully(mut task: JoinHandle<()>, writer: Option<mpsc::Sender<Vec<u8>>>) {
    let Some(writer) = writer else {
        task.abort();
        return;
    };
    // The driver holds the only sender: dropping it ends the writer's queue after its last frame.
    drop(writer);
    if tokio::time::timeout(CLOSE_DRAIN_MAX, &mut task).await.is_err() {
        task.abort();
    }
}

/// Spawns connection tasks.
#[derive(Clone)]
pub struct Transport {
    events: mpsc::Sender<NetEvent>,
    static_key: Arc<Vec<u8>>,
    handshake_timeout: Duration,
    /// Dials leave from this address when the node listens on a specific one, so nodes on
    /// distinct loopback addresses (127.0.0.x) count as distinct IPs at their peers.
    source_ip: Option<IpAddr>,
}

impl Transport {
    /// A transport reporting to `events`.
    pub fn new(events: mpsc::Sender<NetEvent>, handshake_timeout: Duration) -> Transport {
        Transport { events, static_key: Arc::new(noise::generate_static_key()), handshake_timeout, source_ip: None }
    }

    /// Dials bind to `listen`'s IP when it is a specific address (not `0.0.0.0` or `::`).
    pub fn dial_from(mut self, listen: SocketAddr) -> Transport {
        self.source_ip = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
        self
    }

    /// Connects to `addr`, from our listen address's IP when it is specific and of the same
    /// family.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let Some(ip) = self.source_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
            return TcpStream::connect(addr).await;
        };
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(ip, 0))?;
        socket.connect(addr).await
    }

    /// Accepts connections forever, numbering them as inbound connection ids.
    pub fn spawn_listener(&self, listener: TcpListener) -> JoinHandle<()> {
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            let mut acceptor = Acceptor::new("peer listener");
            loop {
                let (stream, addr) = acceptor.accept(|| listener.accept()).await;
                let conn = ConnId::inbound(next);
                next += 1;
                if events.send(NetEvent::Incoming { conn, addr, stream }).await.is_err() {
                    return;
                }
            }
        })
    }

    /// Dials `addr` and runs the connection as initiator.
    pub fn spawn_dial(&self, conn: ConnId, addr: SocketAddr) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let connect = tokio::time::timeout(this.handshake_timeout, this.connect(addr)).await;
            let stream = match connect {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return this.closed(conn, format!("dial {addr}: {err}")).await,
                Err(_) => return this.closed(conn, format!("dial {addr}: timed out")).await,
            };
            this.run(conn, stream, true).await;
        })
    }

    /// Runs an accepted connection as responder.
    pub fn spawn_accept(&self, conn: ConnId, stream: TcpStream) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run(conn, stream, false).await })
    }

    async fn closed(&self, conn: ConnId, reason: String) {
        let _ = self.events.send(NetEvent::Closed { conn, reason }).await;
    }

    async fn run(&self, conn: ConnId, mut stream: TcpStream, initiator: bool) {
        let _ = stream.set_nodelay(true);
        let secured =
            tokio::time::timeout(self.handshake_timeout, noise::handshake(&mut stream, initiator, &self.static_key))
                .await;
        let (transport, binding) = match secured {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => return self.closed(conn, err.to_string()).await,
            Err(_) => return self.closed(conn, "noise handshake timed out".into()).await,
        };
        let (writer_tx, mut writer_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_MAX);
        let (pieces_tx, mut pieces_rx) = mpsc::channel::<Vec<u8>>(PIECES_QUEUED_MAX);
        let secured = NetEvent::Secured { conn, binding: Binding(binding), writer: writer_tx, pieces: pieces_tx };
        if self.events.send(secured).await.is_err() {
            return;
        }
        let transport = Arc::new(transport);
        let (reader, mut writer) = stream.into_split();
        let read_side = self.read_side(conn, reader, transport.clone());
        let write_side = async move {
            let mut nonce = 0u64;
            loop {
                // Control frames first; pieces when no frame waits.
                let frame = tokio::select! {
                    biased;
                    frame = writer_rx.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    Some(piece) = pieces_rx.recv() => piece,
                };
                let sealed = noise::seal_chunks(&transport, &mut nonce, &frame)?;
                writer.write_all(&sealed).await?;
            }
            // Pieces already queued still go out.
            while let Ok(piece) = pieces_rx.try_recv() {
                let sealed = noise::seal_chunks(&transport, &mut nonce, &piece)?;
                writer.write_all(&sealed).await?;
            }
            // The driver closed the connection and everything queued went out.
            writer.shutdown().await?;
            Ok::<(), NoiseError>(())
        };
        tokio::pin!(read_side, write_side);
        let reason = tokio::select! {
            r = &mut read_side => r.err().map_or_else(|| "reader stopped".to_string(), |e| e.to_string()),
            w = &mut write_side => match w {
                Ok(()) => {
                    // Keep reading until the peer closes too: closing a socket with unread
                    // data sends a reset, which can discard what the peer has not read yet.
                    let _ = tokio::time::timeout(CLOSE_DRAIN_MAX, &mut read_side).await;
                    "closed by us".to_string()
                }
                Err(e) => e.to_string(),
            },
        };
        self.closed(conn, reason).await;
    }

    /// Reads, decrypts and reports messages, one credit each.
    async fn read_side(
        &self,
        conn: ConnId,
        reader: tokio::net::tcp::OwnedReadHalf,
        transport: Arc<snow::StatelessTransportState>,
    ) -> Result<(), NoiseError> {
        let credits = Arc::new(Semaphore::new(CONN_EVENTS_MAX));
        let mut nonce = 0u64;
        // Pieces come out of the stream here (hashed on this task, in parallel with the node);
        // the node gets control frames as bytes and each piece as one event.
        let mut splitter = Splitter::default();
        let mut parts = Vec::new();
        // Buffered reads (one syscall for many Noise messages) into buffers reused per message.
        let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
        let (mut msg, mut bytes) = (Vec::new(), Vec::new());
        loop {
            noise::read_msg_into(&mut reader, &mut msg).await?;
            noise::open_into(&transport, nonce, &msg, &mut bytes)?;
            nonce += 1;
            splitter.push(&bytes, &mut parts).map_err(|e| NoiseError::Protocol(e.to_string()))?;
            for part in parts.drain(..) {
                let Ok(credit) = credits.clone().acquire_owned().await else { return Ok(()) };
                let event = match part {
                    Part::Frames(bytes) => NetEvent::Received { conn, bytes, credit },
                    Part::Piece { id, header, data } => {
                        let hash = piece_hash(&header, &data);
                        NetEvent::Piece { conn, request: id, header, hash, data, credit }
                    }
                };
                if self.events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects a Noise initiator to a connection task run by `transport`; returns the
    /// initiator's side and the node side's Secured writer.
    async fn secured_pair(
        transport: &Transport,
        events: &mut mpsc::Receiver<NetEvent>,
    ) -> (TcpStream, snow::StatelessTransportState, JoinHandle<()>, mpsc::Sender<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let (channel, _) = noise::handshake(&mut stream, true, &noise::generate_static_key()).await.expect("noise");
            (stream, channel)
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let task = transport.spawn_accept(ConnId::inbound(0), stream);
        let Some(NetEvent::Secured { writer, .. }) = events.recv().await else { panic!("no Secured event") };
        let (stream, channel) = peer.await.expect("peer");
        (stream, channel, task, writer)
    }

    /// A connection whose events the driver has not taken stops reading at its credit limit,
    /// leaving the shared queue to the others; taking the events lets it read on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_has_at_most_its_credit_of_events_waiting() {
        let (events_tx, mut events) = mpsc::channel(NET_EVENTS_MAX);
        let transport = Transport::new(events_tx, Duration::from_secs(5));
        let (mut stream, channel, _task, _writer) = secured_pair(&transport, &mut events).await;
        let mut nonce = 0;
        let mut sealed = Vec::new();
        let frame = [0, 0, 0, 1, 42];
        for _ in 0..3 * CONN_EVENTS_MAX {
            sealed.extend(noise::seal_chunks(&channel, &mut nonce, &frame).expect("seal"));
        }
        stream.write_all(&sealed).await.expect("send");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut taken = Vec::new();
        while let Ok(NetEvent::Received { credit, .. }) = events.try_recv() {
            taken.push(credit);
        }
        assert_eq!(taken.len(), CONN_EVENTS_MAX, "the reader waits for credit");
        taken.clear();
        let mut received = CONN_EVENTS_MAX;
        while received < 3 * CONN_EVENTS_MAX {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("reads on");
            assert!(matches!(event, Some(NetEvent::Received { .. })), "{event:?}");
            received += 1;
        }
    }

    /// An orderly close delivers every frame already queued to the writer, then EOF.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_sends_what_was_queued_then_shuts_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events_tx, mut events) = mpsc::channel(NET_EVENTS_MAX);
        let transport = Transport::new(events_tx, Duration::from_secs(5));
        let peer = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let (channel, _) = noise::handshake(&mut stream, true, &noise::generate_static_key()).await.expect("noise");
            let (mut received, mut nonce) = (Vec::new(), 0);
            // Reads until the node's side shuts down.
            while let Ok(msg) = noise::read_msg(&mut stream).await {
                received.extend(noise::open(&channel, nonce, &msg).expect("decrypt"));
                nonce += 1;
            }
            received
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let task = transport.spawn_accept(ConnId::inbound(0), stream);
        let Some(NetEvent::Secured { writer, .. }) = events.recv().await else { panic!("no Secured event") };
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10_000]).collect();
        for frame in &frames {
            writer.try_send(frame.clone()).expect("queue has room");
        }
        let closed = close_gracefully(task, Some(writer));
        tokio::time::timeout(2 * CLOSE_DRAIN_MAX, closed).await.expect("closed in time");
        let received = tokio::time::timeout(CLOSE_DRAIN_MAX, peer).await.expect("peer saw EOF").expect("peer task");
        assert_eq!(received.len(), frames.len() * 10_000, "every queued byte arrived");
        assert_eq!(received, frames.concat());
    }
}
