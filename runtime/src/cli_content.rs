//! `mynet add`, `get`, `ls`, `rm`, `verify`: content commands over the local API.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::datadir::DataDir;
use crate::out::outln;

/// How often `mynet get` looks at the transfer.
const POLL: Duration = Duration::from_millis(200);

/// A request body: its length, where it comes from, and a progress callback.
type Upload<'a> = (u64, &'a mut dyn Read, &'a mut dyn FnMut(u64));

pub(crate) struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    pub(crate) fn new(dir: &DataDir) -> Result<Api> {
        let addr_path = dir.api_addr_path();
        let text = std::fs::read_to_string(&addr_path).with_context(|| {
            format!("no running node found for data dir {} (start one with `mynet run`)", dir.root().display())
        })?;
        let addr = text.trim().parse().with_context(|| format!("{} is not an address", addr_path.display()))?;
        let token = std::fs::read_to_string(dir.api_token_path()).context("cannot read the API token")?;
        Ok(Api { addr, token: token.trim().to_string() })
    }

    /// Sends a request (with an optional body of `len` bytes from `body`); returns the status,
    /// the headers' content length and the response stream positioned at the body.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Upload<'_>>,
    ) -> Result<(u16, Option<u64>, BufReader<TcpStream>)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3))
            .with_context(|| format!("cannot reach the node's API at {}; is the node running?", self.addr))?;
        let len = body.as_ref().map_or(0, |b| b.0);
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            self.addr, self.token
        )?;
        if let Some((_, reader, progress)) = body {
            let mut buf = vec![0u8; 1 << 20];
            let mut sent = 0;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).context("the node closed the upload")?;
                sent += n as u64;
                progress(sent);
            }
        }
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok();
            }
        }
        Ok((status, length, reader))
    }

    pub(crate) fn json(&self, method: &str, path: &str) -> Result<Value> {
        let (status, _, mut reader) = self.send(method, path, None)?;
        let mut body = String::new();
        reader.read_to_string(&mut body)?;
        if status != 200 {
            bail!("{}", error_text(status, &body));
        }
        serde_json::from_str(&body).context("API returned invalid JSON")
    }
}

impl Api {
    /// The API's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Whether a node answers at the address (`api.addr` may be left by a node that died).
    pub(crate) fn reachable(&self) -> Result<()> {
        TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map(drop)
            .with_context(|| format!("no node answers at {}", self.addr))
    }

    /// GETs a text body (`/metrics`).
    pub(crate) fn text(&self, path: &str) -> Result<String> {
        let (status, _, mut reader) = self.send("GET", path, None)?;
        let mut body = String::new();
        reader.read_to_string(&mut body)?;
        if status != 200 {
            bail!("{}", error_text(status, &body));
        }
        Ok(body)
    }

    /// POSTs a JSON body; returns the JSON answer.
    pub(crate) fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let bytes = body.to_string().into_bytes();
        let mut reader: &[u8] = &bytes;
        let (status, _, mut response) =
            self.send("POST", path, Some((bytes.len() as u64, &mut reader, &mut |_| {})))?;
        let mut text = String::new();
        response.read_to_string(&mut text)?;
        if status != 200 {
            bail!("{}", error_text(status, &text));
        }
        serde_json::from_str(&text).context("API returned invalid JSON")
    }
}

fn error_text(status: u16, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().and_then(|v| v["error"].as_str()) {
        Some(error) => error.to_string(),
        None => format!("API answered {status}: {body}"),
    }
}

/// A progress line on stderr (bytes, rate, ETA) when stderr is a terminal; silent otherwise.
struct Progress {
    total: u64,
    started: Instant,
    shown: Option<Instant>,
    on: bool,
    what: &'static str,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Progress {
        Progress { total, started: Instant::now(), shown: None, on: std::io::stderr().is_terminal(), what }
    }

    fn update(&mut self, done: u64) {
        if !self.on || self.shown.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.shown = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 { (self.total.saturating_sub(done)) as f64 / rate } else { 0.0 };
        let pct = if self.total > 0 { done as f64 * 100.0 / self.total as f64 } else { 100.0 };
        eprint!(
            "\r{} {} / {} ({pct:.0}%)  {}/s  ETA {eta:.0}s   ",
            self.what,
            human(done),
            human(self.total),
            human(rate as u64)
        );
    }

    fn done(&mut self) {
        if self.on {
            self.shown = None;
            self.update(self.total);
            eprintln!(" done");
        }
    }
}

/// Bytes in binary units: `512 B`, `1.5 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// What `mynet add` says about the item besides its bytes (SPEC R9).
#[derive(Debug, Default)]
pub struct AddOptions {
    /// Seal the file with this key from the registry on the way in.
    pub encrypt_with: Option<String>,
    pub tags: Vec<String>,
    /// Join the group rooted at this item, related to it as `relation`.
    pub group: Option<String>,
    pub relation: Option<String>,
}

impl AddOptions {
    fn describes(&self) -> bool {
        self.encrypt_with.is_some() || !self.tags.is_empty() || self.group.is_some()
    }
}

/// `mynet add FILE`: streams the file to the node (sealed first with `--encrypt`); publishes
/// its state, tags and group; prints its content id.
pub fn add(dir: &DataDir, file: &Path, json: bool, options: &AddOptions) -> Result<()> {
    let api = Api::new(dir)?;
    let group = match &options.group {
        Some(g) => Some(mynet_core::content::ContentId::from_hex(g).map_err(|e| anyhow!("--group {g:?}: {e}"))?),
        None => None,
    };
    let sealed = match &options.encrypt_with {
        Some(key_id) => Some(crate::cli_states::seal_file(dir, file, key_id)?),
        None => None,
    };
    let upload = sealed.as_ref().map_or(file, |s| s.path.as_path());
    let added = upload_file(&api, upload);
    if let Some(sealed) = &sealed {
        let _ = std::fs::remove_file(&sealed.path);
    }
    let added = added?;
    let id = added["id"].as_str().unwrap_or_default().to_string();
    if options.describes() {
        let body = serde_json::json!({
            "size": added["size"],
            "key_id": options.encrypt_with,
            "plain_hash": sealed.as_ref().map(|s| mynet_core::hex::encode(&s.plain_hash)),
            "tags": options.tags,
            "group": group,
            "relation": options.relation,
        });
        let meta = api.post_json(&format!("/content/{id}/edit"), &body)?;
        let wanted_state = if options.encrypt_with.is_some() { Some("encrypted") } else { None };
        if group.is_some() && meta["group"] != serde_json::json!(group)
            || wanted_state.is_some_and(|s| meta["state"] != s)
        {
            bail!(
                "item {id} is stored, but the node refused its description (see the node's log: the group \
                 root must be in the catalogue and not itself a member, and this node must be a publisher)"
            );
        }
    }
    if json {
        outln!("{}", serde_json::json!({"id": added["id"], "size": added["size"], "pieces": added["pieces"]}));
    } else {
        outln!("{id}");
    }
    Ok(())
}

fn upload_file(api: &Api, file: &Path) -> Result<Value> {
    let mut input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let len = input.metadata()?.len();
    let mut progress = Progress::new("adding", len);
    let mut report = |sent: u64| progress.update(sent);
    let (status, _, mut reader) = api.send("POST", "/content", Some((len, &mut input, &mut report)))?;
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    if status != 200 {
        bail!("{}", error_text(status, &body));
    }
    progress.done();
    serde_json::from_str(&body).context("API returned invalid JSON")
}

/// `mynet get ID [-o FILE]`: fetches the item if it is not held (resuming from the pieces
/// the node holds), then writes it out.
pub fn get(dir: &DataDir, id: &str, out: Option<PathBuf>, timeout: Duration, decrypt: bool) -> Result<()> {
    mynet_core::content::ContentId::from_hex(id).map_err(|e| anyhow!("{id:?} is not a content id: {e}"))?;
    let api = Api::new(dir)?;
    // With --decrypt, find the key before fetching anything: a missing key is the error.
    let opener = if decrypt { Some(crate::cli_states::Opener::for_item(dir, &api, id)?) } else { None };
    let mut item = api.json("POST", &format!("/content/{id}/want"))?;
    let started = Instant::now();
    let mut progress: Option<Progress> = None;
    while item["state"] != "complete" {
        let (size, held, pieces) = (
            item["size"].as_u64().unwrap_or(0),
            item["pieces_held"].as_u64().unwrap_or(0),
            item["pieces"].as_u64().unwrap_or(1),
        );
        if size > 0 {
            let bar = progress.get_or_insert_with(|| Progress::new("fetching", size));
            bar.update((held * mynet_core::content::PIECE_LEN).min(size));
        }
        if started.elapsed() > timeout {
            bail!(
                "item {id} not complete after {}s ({held} of {pieces} pieces held); run `mynet get` again to resume",
                timeout.as_secs()
            );
        }
        std::thread::sleep(POLL);
        item = match api.json("GET", &format!("/content/{id}")) {
            Ok(item) => item,
            Err(err) => {
                // The transfer ended without the item (no peer holds it): say so.
                let status = api.json("GET", "/status")?;
                if status["sync"]["active_transfers"] == 0 && status["sync"]["queue"] == 0 {
                    bail!("item {id} is not held by this node or any connected peer ({err})");
                }
                serde_json::json!({"state": "queued"})
            }
        };
    }
    if let Some(bar) = progress.as_mut() {
        bar.done();
    }
    let (status, length, mut reader) = api.send("GET", &format!("/content/{id}/data"), None)?;
    if status != 200 {
        let mut body = String::new();
        reader.read_to_string(&mut body)?;
        bail!("{}", error_text(status, &body));
    }
    let expected = length.unwrap_or(0);
    if let Some(opener) = opener {
        return opener.open_to(dir, &mut reader, expected, out.as_deref());
    }
    let written = match &out {
        Some(path) => {
            let tmp = path.with_extension("mynet-partial");
            let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let n = std::io::copy(&mut reader, &mut file)?;
            file.sync_all()?;
            if n != expected {
                bail!("the node sent {n} of {expected} bytes (a piece may be damaged; see `mynet verify`)");
            }
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
            n
        }
        None => std::io::copy(&mut reader, &mut std::io::stdout().lock())?,
    };
    if written != expected {
        bail!("the node sent {written} of {expected} bytes");
    }
    Ok(())
}

/// `mynet ls`.
pub fn ls(dir: &DataDir, json: bool) -> Result<()> {
    let items = Api::new(dir)?.json("GET", "/content")?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    outln!("{:<64}  {:>12}  {:>13}  STATE", "ID", "SIZE", "PIECES");
    for item in items.as_array().cloned().unwrap_or_default() {
        outln!(
            "{:<64}  {:>12}  {:>13}  {}",
            item["id"].as_str().unwrap_or("?"),
            human(item["size"].as_u64().unwrap_or(0)),
            format!("{}/{}", item["pieces_held"], item["pieces"]),
            item["state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `mynet rm ID`.
pub fn rm(dir: &DataDir, id: &str) -> Result<()> {
    mynet_core::content::ContentId::from_hex(id).map_err(|e| anyhow!("{id:?} is not a content id: {e}"))?;
    Api::new(dir)?.json("DELETE", &format!("/content/{id}"))?;
    Ok(())
}

/// `mynet verify`: re-hashes every held piece; damaged ones are dropped and fetched again.
pub fn verify(dir: &DataDir, json: bool) -> Result<()> {
    let report = Api::new(dir)?.json("POST", "/verify")?;
    if json {
        outln!("{report}");
    } else {
        let damaged = report["damaged"].as_array().map_or(0, Vec::len);
        let count = |field: &str| report[field].as_u64().unwrap_or(0) as usize;
        outln!(
            "{}, {} ({}) checked, {damaged} damaged",
            crate::out::plural(count("items"), "item", "items"),
            crate::out::plural(count("pieces_checked"), "piece", "pieces"),
            human(report["bytes_checked"].as_u64().unwrap_or(0))
        );
    }
    if report["damaged"].as_array().is_some_and(|d| !d.is_empty()) {
        bail!("damaged pieces were dropped; the node fetches them again from its peers");
    }
    Ok(())
}
