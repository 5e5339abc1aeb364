//! TCP connections with Noise, one task per connection, reporting to the driver by channel.

use core::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mynet_core::ConnId;
use mynet_core::handshake::Binding;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::noise::{self, NoiseError};

/// Frames queued for one connection's writer before the connection counts as stuck.
pub const WRITE_QUEUE_MAX: usize = 256;
/// Events queued from all connections to the driver (back-pressure on readers).
pub const NET_EVENTS_MAX: usize = 1024;

/// What the network tells the driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A TCP connection arrived; the node decides whether to accept it.
    Incoming { conn: ConnId, addr: SocketAddr, stream: TcpStream },
    /// The Noise handshake finished; frames for the peer go to `writer`.
    Secured { conn: ConnId, binding: Binding, writer: mpsc::Sender<Vec<u8>> },
    /// Decrypted bytes.
    Received { conn: ConnId, bytes: Vec<u8> },
    /// The connection ended (dial failure, handshake failure, EOF, I/O error).
    Closed { conn: ConnId, reason: String },
}

/// Spawns connection tasks.
#[derive(Clone)]
pub struct Transport {
    events: mpsc::Sender<NetEvent>,
    static_key: Arc<Vec<u8>>,
    handshake_timeout: Duration,
}

impl Transport {
    /// A transport reporting to `events`.
    pub fn new(events: mpsc::Sender<NetEvent>, handshake_timeout: Duration) -> Transport {
        Transport { events, static_key: Arc::new(noise::generate_static_key()), handshake_timeout }
    }

    /// Accepts connections forever, numbering them as inbound connection ids.
    pub fn spawn_listener(&self, listener: TcpListener) -> JoinHandle<()> {
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        let conn = ConnId::inbound(next);
                        next += 1;
                        if events.send(NetEvent::Incoming { conn, addr, stream }).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!("accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }

    /// Dials `addr` and runs the connection as initiator.
    pub fn spawn_dial(&self, conn: ConnId, addr: SocketAddr) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let connect = tokio::time::timeout(this.handshake_timeout, TcpStream::connect(addr)).await;
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
        if self.events.send(NetEvent::Secured { conn, binding: Binding(binding), writer: writer_tx }).await.is_err() {
            return;
        }
        let transport = Arc::new(transport);
        let (mut reader, mut writer) = stream.into_split();
        let read_side = {
            let transport = transport.clone();
            let events = self.events.clone();
            async move {
                let mut nonce = 0u64;
                loop {
                    let msg = noise::read_msg(&mut reader).await?;
                    let bytes = noise::open(&transport, nonce, &msg)?;
                    nonce += 1;
                    if events.send(NetEvent::Received { conn, bytes }).await.is_err() {
                        return Ok::<(), NoiseError>(());
                    }
                }
            }
        };
        let write_side = async move {
            let mut nonce = 0u64;
            while let Some(frame) = writer_rx.recv().await {
                let sealed = noise::seal_chunks(&transport, &mut nonce, &frame)?;
                writer.write_all(&sealed).await?;
            }
            let _ = writer.shutdown().await;
            Ok::<(), NoiseError>(())
        };
        let reason = tokio::select! {
            r = read_side => r.err().map_or_else(|| "reader stopped".to_string(), |e| e.to_string()),
            w = write_side => w.err().map_or_else(|| "writer stopped".to_string(), |e| e.to_string()),
        };
        self.closed(conn, reason).await;
    }
}
