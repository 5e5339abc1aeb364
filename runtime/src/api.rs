//! The local HTTP API: loopback only, bearer token from the data dir.
//!
//! Deliberately small (one request per connection): status and peers, and content: `POST
//! /content` streams a file into the store (`mynet add`), `GET /content[/ID]` lists items,
//! `POST /content/ID/want` asks the network for one (`mynet get`), `GET /content/ID/data`
//! streams a complete item out (each piece re-verified), `DELETE /content/ID` drops it,
//! `POST /verify` re-hashes the whole store. States and groups (SPEC R9): `POST
//! /content/ID/edit` publishes an item's state, key id and group, `GET /content/ID/meta` shows
//! its signed metadata, `GET /groups/ID` its group, `GET /keys` and `POST /keys` key records
//! (never key material: that stays in the CLI's reach, in the data dir's key registry).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use mynet_core::Input;
use mynet_core::content::{ContentId, PieceRef};
use mynet_core::states::{ItemEdit, KeyEdit};
use mynet_storage::content::ContentStore;
use serde_json::json;

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
pub async fn serve(listener: TcpListener, token: String, requests: mpsc::Sender<ApiRequest>, store: Arc<ContentStore>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_MAX));
    let mut acceptor = Acceptor::new("local API");
    loop {
        let (stream, _) = acceptor.accept(|| listener.accept()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (token, requests, store) = (token.clone(), requests.clone(), store.clone());
        tokio::spawn(async move {
            let _ = handle(stream, &token, &requests, &store).await;
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    token: &str,
    requests: &mpsc::Sender<ApiRequest>,
    store: &Arc<ContentStore>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > REQUEST_HEAD_MAX {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(true)
    };
    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, read_head).await, Ok(Ok(true))) {
        return respond(&mut stream, 400, r#"{"error":"bad request"}"#).await;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len()) + 4;
    let body_start = head.get(end..).unwrap_or_default().to_vec();
    head.truncate(end);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (request_line.next().unwrap_or_default(), request_line.next().unwrap_or_default().to_string());
    let mut authorized = false;
    let mut content_length = None;
    for line in lines {
        let mut parts = line.splitn(2, ':');
        let name = parts.next().unwrap_or_default().trim();
        let value = parts.next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("authorization") {
            authorized |= constant_time_eq(value.as_bytes(), format!("Bearer {token}").as_bytes());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<u64>().ok();
        }
    }
    if !authorized {
        return respond(&mut stream, 401, r#"{"error":"missing or wrong token (see api.token in the data dir)"}"#)
            .await;
    }
    let item = path.strip_prefix("/content/").map(|rest| rest.split('/').collect::<Vec<_>>());
    let id = item.as_ref().and_then(|parts| ContentId::from_hex(parts[0]).ok());
    if item.is_some() && id.is_none() {
        return respond(&mut stream, 400, r#"{"error":"a content id is 64 hex characters"}"#).await;
    }
    let (path, input) = match (method, path.as_str(), item.as_deref(), id) {
        ("GET", _, Some([_, "data"]), Some(id)) => return stream_out(stream, store, id).await,
        ("POST", "/content", None, _) => {
            let Some(len) = content_length else {
                return respond(&mut stream, 411, r#"{"error":"POST /content needs a Content-Length"}"#).await;
            };
            match import(&mut stream, store, body_start, len).await {
                Ok(imported) => {
                    let body = json!({"id": imported.id, "size": imported.size, "pieces": imported.pieces});
                    let input = Input::Added { id: imported.id, size: imported.size };
                    if forward(requests, "/status".into(), Some(input)).await.is_none() {
                        return respond(&mut stream, 503, r#"{"error":"node is shutting down"}"#).await;
                    }
                    return respond(&mut stream, 200, &body.to_string()).await;
                }
                Err(err) => {
                    let body = json!({ "error": format!("import failed: {err}") }).to_string();
                    return respond(&mut stream, 500, &body).await;
                }
            }
        }
        ("POST", "/verify", None, _) => {
            let store = store.clone();
            let report = tokio::task::spawn_blocking(move || store.verify_all()).await;
            return match report {
                Ok(Ok(report)) => {
                    for (id, index) in &report.damaged {
                        let piece = PieceRef { id: *id, index: *index };
                        forward(requests, "/status".into(), Some(Input::Damaged { piece })).await;
                    }
                    let damaged: Vec<_> =
                        report.damaged.iter().map(|(id, index)| json!({"id": id, "piece": index})).collect();
                    let body = json!({
                        "items": report.items, "pieces_checked": report.pieces_checked,
                        "bytes_checked": report.bytes_checked, "damaged": damaged,
                    });
                    respond(&mut stream, 200, &body.to_string()).await
                }
                Ok(Err(err)) => respond(&mut stream, 500, &json!({ "error": err.to_string() }).to_string()).await,
                Err(err) => respond(&mut stream, 500, &json!({ "error": err.to_string() }).to_string()).await,
            };
        }
        ("POST", _, Some([_, "want"]), Some(id)) => (format!("/content/{id}"), Some(Input::Want { id })),
        ("POST", _, Some([_, "edit"]), Some(id)) => {
            let body = match read_json::<EditBody>(&mut stream, body_start, content_length).await {
                Ok(body) => body,
                Err(err) => return respond(&mut stream, 400, &json!({ "error": err }).to_string()).await,
            };
            let edit = ItemEdit {
                id,
                size: body.size,
                key_id: body.key_id,
                plain_hash: body.plain_hash.map(|h| h.0),
                tags: body.tags,
                group: body.group,
                relation: body.relation,
            };
            (format!("/content/{id}/meta"), Some(Input::Edit(edit)))
        }
        ("POST", "/keys", None, _) => {
            let body = match read_json::<KeyEdit>(&mut stream, body_start, content_length).await {
                Ok(body) => body,
                Err(err) => return respond(&mut stream, 400, &json!({ "error": err }).to_string()).await,
            };
            ("/keys".to_string(), Some(Input::KeyEdit(body)))
        }
        ("DELETE", _, Some([_]), Some(id)) => ("/content".to_string(), Some(Input::Remove { id })),
        ("GET", _, _, _) => (path, None),
        _ => return respond(&mut stream, 405, r#"{"error":"method not allowed here"}"#).await,
    };
    match forward(requests, path, input).await {
        Some((status, body)) => respond(&mut stream, status, &body).await,
        None => respond(&mut stream, 503, r#"{"error":"node is shutting down"}"#).await,
    }
}

/// Largest JSON body an edit may have.
pub const EDIT_BODY_MAX: u64 = 16 * 1024;

/// `POST /content/ID/edit`: an item's state, key and group (`mynet add` options).
#[derive(serde::Deserialize)]
struct EditBody {
    size: u64,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    plain_hash: Option<ContentId>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    group: Option<ContentId>,
    #[serde(default)]
    relation: Option<String>,
}

/// Reads a JSON request body of at most [`EDIT_BODY_MAX`] bytes (the first bytes already read).
async fn read_json<T: serde::de::DeserializeOwned>(
    stream: &mut TcpStream,
    mut body: Vec<u8>,
    len: Option<u64>,
) -> Result<T, String> {
    let len = len.ok_or("a JSON body needs a Content-Length")?;
    if len > EDIT_BODY_MAX {
        return Err(format!("body of {len} bytes; at most {EDIT_BODY_MAX}"));
    }
    let missing = (len as usize).saturating_sub(body.len());
    let mut rest = vec![0u8; missing];
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut rest)).await {
        Ok(Ok(_)) => {}
        _ => return Err("the body ended early".into()),
    }
    body.extend_from_slice(&rest);
    body.truncate(len as usize);
    serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Asks the driver; `None` if it is gone.
async fn forward(requests: &mpsc::Sender<ApiRequest>, path: String, input: Option<Input>) -> Option<(u16, String)> {
    let (reply, answer) = oneshot::channel();
    requests.send(ApiRequest { path, input, reply }).await.ok()?;
    answer.await.ok()
}

/// Streams `len` bytes of request body into the store (the first bytes already read), one
/// piece-sized chunk at a time through a blocking importer thread: memory stays at a few
/// chunks whatever the file size.
async fn import(
    stream: &mut TcpStream,
    store: &Arc<ContentStore>,
    first: Vec<u8>,
    len: u64,
) -> anyhow::Result<mynet_storage::content::Imported> {
    let (chunks, queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let store = store.clone();
    let importer = tokio::task::spawn_blocking(move || {
        let mut importer = store.importer()?;
        while let Ok(chunk) = queue.recv() {
            importer.write(&chunk)?;
        }
        importer.finish()
    });
    let mut remaining = len;
    let first_len = (first.len() as u64).min(remaining);
    remaining -= first_len;
    let mut ok = chunks.send(first[..first_len as usize].to_vec()).is_ok();
    while ok && remaining > 0 {
        let mut chunk = vec![0u8; remaining.min(1 << 20) as usize];
        let read = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut chunk)).await;
        match read {
            Ok(Ok(_)) => {}
            _ => {
                drop(chunks);
                let _ = importer.await;
                anyhow::bail!("the upload ended after {} of {len} bytes", len - remaining);
            }
        }
        remaining -= chunk.len() as u64;
        let sender = chunks.clone();
        ok = tokio::task::spawn_blocking(move || sender.send(chunk).is_ok()).await.unwrap_or(false);
    }
    drop(chunks);
    Ok(importer.await??)
}

/// Streams a complete item out, each piece re-verified as it is read.
async fn stream_out(mut stream: TcpStream, store: &Arc<ContentStore>, id: ContentId) -> std::io::Result<()> {
    let info = store.info(id).ok().flatten();
    let Some(info) = info.filter(|i| i.complete()) else {
        let body = json!({ "error": format!("item {id} is not held completely here") }).to_string();
        return respond(&mut stream, 404, &body).await;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        info.size
    );
    stream.write_all(head.as_bytes()).await?;
    for index in 0..info.pieces {
        let store = store.clone();
        let piece = tokio::task::spawn_blocking(move || store.read_piece(id, index)).await;
        match piece {
            Ok(Ok(data)) => stream.write_all(&data).await?,
            // A damaged piece ends the response short: the client sees fewer bytes than promised.
            _ => return Err(std::io::Error::other(format!("piece {index} of {id} could not be read"))),
        }
    }
    stream.shutdown().await
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
        411 => "Length Required",
        500 => "Internal Server Error",
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
