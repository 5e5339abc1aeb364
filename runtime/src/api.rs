//! The local HTTP API: loopback only, bearer token from the data dir.
//!
//! Deliberately tiny (GET only, one request per connection): it serves `mynet status` and
//! `mynet peers` and monitoring scripts, nothing that needs a framework.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::accept::Acceptor;
use crate::datadir::DataDir;
use crate::driver::ApiRequest;

/// Largest request head the API reads.
pub const REQUEST_HEAD_MAX: usize = 8 * 1024;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests handled at once; more wait in the kernel's accept queue.
pub const CONCURRENT_MAX: usize = 16;

/// Serves API requests on `listener`, forwarding them to the driver through `requests`.
pub async fn serve(listener: TcpListener, token: String, requests: mpsc::Sender<ApiRequest>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_MAX));
    let mut acceptor = Acceptor::new("local API");
    loop {
        let (stream, _) = acceptor.accept(|| listener.accept()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (token, requests) = (token.clone(), requests.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &token, &requests)).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, token: &str, requests: &mpsc::Sender<ApiRequest>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > REQUEST_HEAD_MAX {
            return respond(&mut stream, 400, r#"{"error":"bad request"}"#).await;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (request_line.next().unwrap_or_default(), request_line.next().unwrap_or_default().to_string());
    let authorized = lines.any(|line| {
        let mut parts = line.splitn(2, ':');
        let name = parts.next().unwrap_or_default().trim();
        let value = parts.next().unwrap_or_default().trim();
        name.eq_ignore_ascii_case("authorization")
            && constant_time_eq(value.as_bytes(), format!("Bearer {token}").as_bytes())
    });
    if !authorized {
        return respond(&mut stream, 401, r#"{"error":"missing or wrong token (see api.token in the data dir)"}"#)
            .await;
    }
    if method != "GET" {
        return respond(&mut stream, 405, r#"{"error":"only GET is supported"}"#).await;
    }
    let (reply, answer) = oneshot::channel();
    if requests.send(ApiRequest { path, reply }).await.is_err() {
        return respond(&mut stream, 503, r#"{"error":"node is shutting down"}"#).await;
    }
    match answer.await {
        Ok((status, body)) => respond(&mut stream, status, &body).await,
        Err(_) => respond(&mut stream, 503, r#"{"error":"node is shutting down"}"#).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Client side: GETs `path` from the node running on `dir` and returns the JSON body.
pub fn get(dir: &DataDir, path: &str) -> Result<serde_json::Value> {
    let addr_path = dir.api_addr_path();
    let addr_text = read_trimmed(&addr_path).with_context(|| {
        format!(
            "no running node found for data dir {} ({} is missing; start one with `mynet run`)",
            dir.root().display(),
            addr_path.display()
        )
    })?;
    let addr: SocketAddr =
        addr_text.parse().with_context(|| format!("{} holds {addr_text:?}, not an address", addr_path.display()))?;
    let token = read_trimmed(&dir.api_token_path()).context("cannot read the API token")?;
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the node's API at {addr}; is the node running?"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("malformed API response"))?;
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 200 {
        bail!("API answered {status}: {body}");
    }
    serde_json::from_str(body).context("API returned invalid JSON")
}

fn read_trimmed(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}
