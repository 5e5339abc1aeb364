//! The local HTTP API: loopback only, bearer token from the data dir, served by hyper (HTTP/1.1)
//! with axum routing.
//!
//! Routes: `GET /` the dashboard page (no data in it: it asks the API with the token from the
//! URL's fragment); `GET /status`, `/peers`, `/network` (what peers report), `/metrics`
//! (Prometheus text), `/metrics/history` (the last samples), `GET /config` and `POST /config`
//! (live configuration); content: `POST /content` streams a file into the store (`mynet add`),
//! `GET /content[/ID]` lists items, `POST /content/ID/want` asks the network for one (`mynet
//! get`), `GET /content/ID/data` streams a complete item out (each piece re-verified), `DELETE
//! /content/ID` drops it, `POST /verify` re-hashes the whole store. States and groups (SPEC
//! R9): `POST /content/ID/edit`, `GET /content/ID/meta`, `GET /groups/ID`, `GET /keys` and
//! `POST /keys` (key records, never key material).
//!
//! Bounds: at most [`CONCURRENT_MAX`] connections at once (more wait in the kernel's accept
//! queue), request heads of at most [`REQUEST_HEAD_MAX`] bytes read within [`REQUEST_TIMEOUT`],
//! JSON bodies of at most [`JSON_BODY_MAX`] bytes, each upload chunk within [`REQUEST_TIMEOUT`],
//! and an answer from the node within [`ANSWER_TIMEOUT`]. The token is compared in constant time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get as get_route, post};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use mynet_core::Input;
use mynet_core::content::{ContentId, PieceRef};
use mynet_core::states::{ItemEdit, KeyEdit};
use mynet_storage::content::ContentStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::accept::Acceptor;
use crate::datadir::DataDir;
use crate::driver::ApiRequest;
use crate::metrics::SharedMetrics;

/// Largest request head the API reads (hyper's smallest read buffer).
pub const REQUEST_HEAD_MAX: usize = 8 * 1024;
/// Time a client has to send its request head, and each chunk of an upload.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the node has to answer a request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel's accept queue.
pub const CONCURRENT_MAX: usize = 16;
/// Largest JSON body (edits, key records, config changes).
pub const JSON_BODY_MAX: usize = 16 * 1024;

/// What every handler shares.
#[derive(Clone)]
struct App {
    token: Arc<str>,
    requests: mpsc::Sender<ApiRequest>,
    store: Arc<ContentStore>,
    metrics: SharedMetrics,
    dir: DataDir,
    /// One configuration change at a time (read, check, write, apply).
    config_lock: Arc<Mutex<()>>,
}

/// Serves API requests on `listener`, forwarding node questions to the driver through
/// `requests`.
pub async fn serve(
    listener: TcpListener,
    token: String,
    requests: mpsc::Sender<ApiRequest>,
    store: Arc<ContentStore>,
    metrics: SharedMetrics,
    dir: DataDir,
) {
    let app = App { token: token.into(), requests, store, metrics, dir, config_lock: Arc::new(Mutex::new(())) };
    let router = router(app);
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_MAX));
    let mut acceptor = Acceptor::new("local API");
    loop {
        let (stream, _) = acceptor.accept(|| listener.accept()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(REQUEST_HEAD_MAX)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

fn router(app: App) -> Router {
    let authorized = Router::new()
        .route("/status", get_route(status))
        .route("/peers", get_route(ask))
        .route("/network", get_route(ask))
        .route("/keys", get_route(ask).post(post_key))
        .route("/groups/{id}", get_route(ask))
        .route("/content", get_route(ask).post(upload).layer(DefaultBodyLimit::disable()))
        .route("/content/{id}", get_route(item_ask).delete(remove))
        .route("/content/{id}/meta", get_route(item_ask))
        .route("/content/{id}/data", get_route(download))
        .route("/content/{id}/want", post(want))
        .route("/content/{id}/edit", post(edit))
        .route("/verify", post(verify))
        .route("/metrics", get_route(metrics_text))
        .route("/metrics/history", get_route(metrics_history))
        .route("/config", get_route(config_show).post(config_set))
        .route("/config/running", get_route(ask))
        .layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/", get_route(dashboard))
        .route("/dashboard", get_route(dashboard))
        .merge(authorized)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API path") })
        .layer(DefaultBodyLimit::max(JSON_BODY_MAX))
        .with_state(app)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": message.to_string() }).to_string())
        .into_response()
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", app.token);
    let given = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if !constant_time_eq(given, expected.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token (see api.token in the data dir)");
    }
    next.run(request).await
}

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], crate::dashboard::PAGE)
        .into_response()
}

/// Asks the driver; `None` if it is gone or did not answer in time.
pub(crate) async fn forward(
    requests: &mpsc::Sender<ApiRequest>,
    path: String,
    input: Option<Input>,
) -> Option<(u16, String)> {
    let (reply, answer) = oneshot::channel();
    requests.send(ApiRequest { path, input, reply }).await.ok()?;
    tokio::time::timeout(ANSWER_TIMEOUT, answer).await.ok()?.ok()
}

/// [`forward`] for a JSON answer with status 200; `None` otherwise.
pub(crate) async fn forward_json(
    requests: &mpsc::Sender<ApiRequest>,
    path: &str,
    input: Option<Input>,
) -> Option<Value> {
    match forward(requests, path.to_string(), input).await? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

async fn answer(requests: &mpsc::Sender<ApiRequest>, path: String, input: Option<Input>) -> Response {
    match forward(requests, path, input).await {
        Some((status, body)) => json_response(status, body),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down or did not answer"),
    }
}

/// `GET /status`: the node's status with the process's resources and the health checks of
/// the latest sample.
async fn status(State(app): State<App>) -> Response {
    let Some((code, body)) = forward(&app.requests, "/status".into(), None).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down or did not answer");
    };
    let Ok(mut status) = serde_json::from_str::<Value>(&body) else { return json_response(code, body) };
    let (resources, health) = app.metrics.lock().await.status_extras(&status);
    if let Some(object) = status.as_object_mut() {
        object.insert("resources".into(), resources);
        object.insert("health".into(), health);
    }
    json_response(code, status.to_string())
}

async fn ask(State(app): State<App>, request: Request) -> Response {
    answer(&app.requests, request.uri().path().to_string(), None).await
}

/// A refusal of a request, turned into a JSON error response.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn content_id(text: &str) -> Result<ContentId, ApiError> {
    ContentId::from_hex(text).map_err(|_| ApiError(StatusCode::BAD_REQUEST, "a content id is 64 hex characters".into()))
}

async fn item_ask(State(app): State<App>, UrlPath(id): UrlPath<String>, request: Request) -> Response {
    match content_id(&id) {
        Ok(_) => answer(&app.requests, request.uri().path().to_string(), None).await,
        Err(response) => response.into_response(),
    }
}

async fn want(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    match content_id(&id) {
        Ok(id) => answer(&app.requests, format!("/content/{id}"), Some(Input::Want { id })).await,
        Err(response) => response.into_response(),
    }
}

async fn remove(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    match content_id(&id) {
        Ok(id) => answer(&app.requests, "/content".into(), Some(Input::Remove { id })).await,
        Err(response) => response.into_response(),
    }
}

/// `POST /content/ID/edit`: an item's state, key and group (`mynet add` options).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

async fn edit(State(app): State<App>, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let (id, body) = match (content_id(&id), parse_json::<EditBody>(&body)) {
        (Ok(id), Ok(body)) => (id, body),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
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
    answer(&app.requests, format!("/content/{id}/meta"), Some(Input::Edit(edit))).await
}

async fn post_key(State(app): State<App>, body: Bytes) -> Response {
    match parse_json::<KeyEdit>(&body) {
        Ok(edit) => answer(&app.requests, "/keys".into(), Some(Input::KeyEdit(edit))).await,
        Err(response) => response.into_response(),
    }
}

async fn verify(State(app): State<App>) -> Response {
    let store = app.store.clone();
    let report = match tokio::task::spawn_blocking(move || store.verify_all()).await {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
    };
    for (id, index) in &report.damaged {
        let piece = PieceRef { id: *id, index: *index };
        forward(&app.requests, "/status".into(), Some(Input::Damaged { piece })).await;
    }
    let damaged: Vec<_> = report.damaged.iter().map(|(id, index)| json!({"id": id, "piece": index})).collect();
    let body = json!({
        "items": report.items, "pieces_checked": report.pieces_checked,
        "bytes_checked": report.bytes_checked, "damaged": damaged,
    });
    json_response(200, body.to_string())
}

/// `POST /content`: streams the body into the store, one chunk at a time through a blocking
/// importer thread (memory stays at a few chunks whatever the file size); the node learns of
/// the item once all of it is durable.
async fn upload(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(len) = len else {
        return error(StatusCode::LENGTH_REQUIRED, "POST /content needs a Content-Length");
    };
    match import(&app.store, body, len).await {
        Ok(imported) => {
            let input = Input::Added { id: imported.id, size: imported.size };
            if forward(&app.requests, "/status".into(), Some(input)).await.is_none() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
            }
            json_response(200, json!({"id": imported.id, "size": imported.size, "pieces": imported.pieces}).to_string())
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("import failed: {err:#}")),
    }
}

async fn import(store: &Arc<ContentStore>, body: Body, len: u64) -> Result<mynet_storage::content::Imported> {
    let (chunks, queue) = std::sync::mpsc::sync_channel::<Bytes>(4);
    let store = store.clone();
    let importer = tokio::task::spawn_blocking(move || {
        let mut importer = store.importer()?;
        while let Ok(chunk) = queue.recv() {
            importer.write(&chunk)?;
        }
        importer.finish()
    });
    // hyper reads no more than the Content-Length.
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let outcome = loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                let sender = chunks.clone();
                if !tokio::task::spawn_blocking(move || sender.send(chunk).is_ok()).await.unwrap_or(false) {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(err))) => break Err(anyhow!("the upload failed after {received} of {len} bytes: {err}")),
            Err(_) => break Err(anyhow!("the upload stalled after {received} of {len} bytes")),
        }
    };
    drop(chunks);
    let imported = importer.await?;
    outcome?;
    if received != len {
        bail!("the upload ended after {received} of {len} bytes");
    }
    Ok(imported?)
}

/// `GET /content/ID/data`: a complete item, each piece re-verified as it is read. A damaged
/// piece ends the response short: the client sees fewer bytes than promised.
async fn download(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match content_id(&id) {
        Ok(id) => id,
        Err(response) => return response.into_response(),
    };
    let info = app.store.info(id).ok().flatten();
    let Some(info) = info.filter(|i| i.complete()) else {
        return error(StatusCode::NOT_FOUND, format!("item {id} is not held completely here"));
    };
    let store = app.store.clone();
    let pieces = futures_util::stream::unfold(0u64, move |index| {
        let store = store.clone();
        async move {
            if index >= info.pieces {
                return None;
            }
            let piece = tokio::task::spawn_blocking(move || store.read_piece(id, index)).await;
            let item = match piece {
                Ok(Ok(data)) => Ok(Bytes::from(data)),
                _ => Err(std::io::Error::other(format!("piece {index} of {id} could not be read"))),
            };
            // After a failed piece the stream ends.
            let next = if item.is_ok() { index + 1 } else { info.pieces };
            Some((item, next))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, info.size.to_string()),
        ],
        Body::from_stream(pieces),
    )
        .into_response()
}

async fn metrics_text(State(app): State<App>) -> Response {
    let status =
        forward(&app.requests, "/status".into(), None).await.and_then(|(_, body)| serde_json::from_str(&body).ok());
    let text = app.metrics.lock().await.prometheus_text(status);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn metrics_history(State(app): State<App>) -> Response {
    let history = app.metrics.lock().await.history_json();
    json_response(200, history.to_string())
}

async fn config_show(State(app): State<App>) -> Response {
    match app.dir.load_config() {
        Ok(layered) => json_response(200, layered.config.provenance_json(&layered.sources).to_string()),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// `POST /config` `{"field": F, "value": V}`: see [`crate::live_config`].
async fn config_set(State(app): State<App>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        field: String,
        value: Value,
    }
    let change = match parse_json::<Change>(&body) {
        Ok(change) => change,
        Err(response) => return response.into_response(),
    };
    let _one_at_a_time = app.config_lock.lock().await;
    match crate::live_config::set(&app.dir, &app.requests, &change.field, change.value).await {
        Ok(report) => json_response(200, report.to_string()),
        Err(err) => error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (the token's length is fixed); the bytes are compared whole.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
