//! `mynet key add/ls/rm`, `mynet group`, and the sealing behind `mynet add --encrypt` and
//! `mynet get --decrypt` (SPEC R9).
//!
//! Key material is read from and written to the data dir's key registry by this (CLI) process
//! only; the node is told key *records* (`POST /keys`) and item descriptions, never keys.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use mynet_storage::keys::{KeyRegistry, check_key_id, key_from_file};
use mynet_storage::sealed::{self, SealKey};
use serde_json::{Value, json};

use crate::cli_content::Api;
use crate::datadir::{DataDir, os_random_32};
use crate::out::outln;

/// A file sealed for `mynet add --encrypt`, waiting to be uploaded.
pub struct Sealed {
    pub path: PathBuf,
    /// BLAKE3 of the plaintext (the id its decrypted form has).
    pub plain_hash: [u8; 32],
}

/// A BLAKE3 hasher that passes bytes through.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn registry_key(dir: &DataDir, key_id: &str) -> Result<SealKey> {
    KeyRegistry::new(dir.root()).get(key_id)?.ok_or_else(|| {
        anyhow!(
            "no key {key_id:?} in the key registry of {} (add it with `mynet key add {key_id}`)",
            dir.root().display()
        )
    })
}

/// Seals `file` with the registry's key `key_id` into a temporary file in the data dir.
pub fn seal_file(dir: &DataDir, file: &Path, key_id: &str) -> Result<Sealed> {
    let key = registry_key(dir, key_id)?;
    let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let len = input.metadata()?.len();
    let path = dir.root().join(format!(".sealing-{}-{:016x}", std::process::id(), crate::datadir::os_random_u64()));
    let output = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut nonce_prefix = [0u8; sealed::NONCE_PREFIX_LEN];
    nonce_prefix.copy_from_slice(&os_random_32()[..sealed::NONCE_PREFIX_LEN]);
    let mut reader = Hashing { inner: BufReader::new(input), hasher: blake3::Hasher::new() };
    let mut writer = BufWriter::new(output);
    let result = sealed::seal(&key, nonce_prefix, len, &mut reader, &mut writer)
        .map_err(anyhow::Error::from)
        .and_then(|()| writer.into_inner().map_err(|e| anyhow!("{}", e.error()))?.sync_all().map_err(Into::into));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&path);
        return Err(err.context(format!("sealing {} failed", file.display())));
    }
    Ok(Sealed { path, plain_hash: *reader.hasher.finalize().as_bytes() })
}

/// What `mynet get --decrypt` needs, found before anything is fetched.
pub struct Opener {
    id: String,
    key: SealKey,
    plain_hash: Option<[u8; 32]>,
}

impl Opener {
    pub fn for_item(dir: &DataDir, api: &Api, id: &str) -> Result<Opener> {
        let meta = api
            .json("GET", &format!("/content/{id}/meta"))
            .with_context(|| format!("cannot decrypt {id}: its metadata is not in this node's catalogue"))?;
        if meta["state"] != "encrypted" {
            bail!("item {id} is not encrypted (its state is {}); get it without --decrypt", meta["state"]);
        }
        let key_id = meta["key_id"].as_str().unwrap_or_default();
        let key = KeyRegistry::new(dir.root()).get(key_id)?.ok_or_else(|| {
            anyhow!(
                "item {id} is encrypted with key {key_id:?}, which this node's key registry does not hold \
                 (give it with `mynet key add {key_id} --from-file FILE`)"
            )
        })?;
        let plain_hash = meta["plain_hash"].as_str().and_then(|h| mynet_core::hex::decode_array::<32>(h).ok());
        Ok(Opener { id: id.to_string(), key, plain_hash })
    }

    /// Decrypts the sealed item streamed by the node (`len` bytes) into `out` (or stdout),
    /// checking every segment and, at the end, the plaintext's hash against the signed one.
    pub fn open_to(self, dir: &DataDir, sealed_bytes: &mut dyn Read, len: u64, out: Option<&Path>) -> Result<()> {
        // The sealed bytes go to a temporary file first: nothing unauthenticated is written out.
        let tmp = dir.root().join(format!(".opening-{}-{:016x}", std::process::id(), crate::datadir::os_random_u64()));
        let result = (|| -> Result<()> {
            let mut file = File::create(&tmp)?;
            let n = std::io::copy(sealed_bytes, &mut file)?;
            if n != len {
                bail!("the node sent {n} of {len} bytes");
            }
            drop(file);
            let input = BufReader::new(File::open(&tmp)?);
            let write = |output: &mut dyn Write| -> Result<[u8; 32]> {
                let mut hashing = HashingWriter { inner: output, hasher: blake3::Hasher::new() };
                sealed::open(&self.key, input, &mut hashing).with_context(|| format!("cannot decrypt {}", self.id))?;
                Ok(*hashing.hasher.finalize().as_bytes())
            };
            let hash = match out {
                Some(path) => {
                    let partial = path.with_extension("mynet-partial");
                    let mut file =
                        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
                    let hash = write(&mut file);
                    if hash.is_err() {
                        let _ = std::fs::remove_file(&partial);
                    }
                    let hash = hash?;
                    if self.plain_hash.is_some_and(|h| h != hash) {
                        let _ = std::fs::remove_file(&partial);
                        bail!("the plaintext of {} does not match its signed plaintext hash", self.id);
                    }
                    file.sync_all()?;
                    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
                    hash
                }
                None => write(&mut std::io::stdout().lock())?,
            };
            if self.plain_hash.is_some_and(|h| h != hash) {
                bail!("the plaintext of {} does not match its signed plaintext hash", self.id);
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `mynet key add KEY_ID [--from-file F] [--valid-until T]`: stores the key in the registry
/// and publishes its record. The node must be running (the record is signed by it).
pub fn key_add(dir: &DataDir, key_id: &str, from_file: Option<&Path>, valid_until: Option<&str>) -> Result<()> {
    check_key_id(key_id).map_err(|e| anyhow!(e))?;
    let valid_until_ms = valid_until.map(parse_rfc3339_ms).transpose()?;
    let api = Api::new(dir)?;
    api.json("GET", "/status")?;
    let registry = KeyRegistry::new(dir.root());
    if registry.get(key_id)?.is_some() {
        bail!(
            "the key registry already holds {key_id:?}; a key is never replaced (remove it with `mynet key rm {key_id}` first)"
        );
    }
    let key = match from_file {
        Some(path) => key_from_file(path).map_err(|e| anyhow!(e))?,
        None => SealKey::from_bytes(os_random_32()),
    };
    registry.add(key_id, &key)?;
    publish_record(&api, key_id, valid_until_ms, false)?;
    outln!("key {key_id} added{}", valid_until.map_or(String::new(), |t| format!(", valid until {t}")));
    Ok(())
}

fn publish_record(api: &Api, key_id: &str, valid_until_ms: Option<u64>, revoked: bool) -> Result<()> {
    let body = json!({
        "key_id": key_id, "algorithm": sealed::ALGORITHM, "valid_until_ms": valid_until_ms, "revoked": revoked,
    });
    let records = api.post_json("/keys", &body)?;
    let published = records.as_array().is_some_and(|r| r.iter().any(|k| k["key_id"] == key_id));
    if !published {
        bail!("the node did not publish the record of {key_id:?} (is it in the network's publishers? see its log)");
    }
    Ok(())
}

/// `mynet key ls [--json]`: keys held here and key records in the catalogue.
pub fn key_ls(dir: &DataDir, json_out: bool) -> Result<()> {
    let held = KeyRegistry::new(dir.root()).list()?;
    let records: Vec<Value> = match Api::new(dir).and_then(|api| api.json("GET", "/keys")) {
        Ok(Value::Array(records)) => records,
        Ok(_) => Vec::new(),
        Err(err) => {
            eprintln!("note: key records not shown ({err:#})");
            Vec::new()
        }
    };
    let mut ids: Vec<String> = held.clone();
    ids.extend(records.iter().filter_map(|r| r["key_id"].as_str().map(str::to_string)));
    ids.sort();
    ids.dedup();
    let rows: Vec<Value> = ids
        .iter()
        .map(|id| {
            let record = records.iter().find(|r| r["key_id"] == id.as_str());
            json!({
                "key_id": id,
                "held": held.contains(id),
                "record": record.is_some(),
                "status": record.map_or(json!("no_record"), |r| r["status"].clone()),
                "valid_until_ms": record.map_or(Value::Null, |r| r["valid_until_ms"].clone()),
            })
        })
        .collect();
    if json_out {
        outln!("{}", Value::Array(rows));
        return Ok(());
    }
    outln!("{:<32}  {:<5}  {:<10}  VALID UNTIL (ms)", "KEY ID", "HELD", "STATUS");
    for row in &rows {
        outln!(
            "{:<32}  {:<5}  {:<10}  {}",
            row["key_id"].as_str().unwrap_or_default(),
            if row["held"] == true { "yes" } else { "no" },
            row["status"].as_str().unwrap_or_default(),
            row["valid_until_ms"].as_u64().map_or("-".to_string(), |v| v.to_string()),
        );
    }
    outln!("{} {}", rows.len(), if rows.len() == 1 { "key" } else { "keys" });
    Ok(())
}

/// `mynet key rm KEY_ID [--revoke]`: deletes the key from the registry; `--revoke` also
/// publishes its record as revoked (items sealed with it are flagged `key_revoked`).
pub fn key_rm(dir: &DataDir, key_id: &str, revoke: bool) -> Result<()> {
    if revoke {
        let api = Api::new(dir)?;
        publish_record(&api, key_id, None, true)?;
    }
    let removed = KeyRegistry::new(dir.root()).remove(key_id)?;
    match (removed, revoke) {
        (true, _) => outln!("key {key_id} removed{}", if revoke { " and revoked" } else { "" }),
        (false, true) => outln!("key {key_id} revoked (the registry did not hold it)"),
        (false, false) => bail!("the key registry holds no key {key_id:?}"),
    }
    Ok(())
}

/// `mynet group ID [--json]`: the group, each member's state, whether it is held, its flags.
pub fn group(dir: &DataDir, id: &str, json_out: bool) -> Result<()> {
    mynet_core::content::ContentId::from_hex(id).map_err(|e| anyhow!("{id:?} is not a content id: {e}"))?;
    let api = Api::new(dir)?;
    let view = api.json("GET", &format!("/groups/{id}"))?;
    if json_out {
        outln!("{view}");
        return Ok(());
    }
    outln!("group {}", view["root"].as_str().unwrap_or_default());
    outln!("{:<64}  {:<10}  {:<10}  {:<5}  FLAGS", "ITEM", "RELATION", "STATE", "HELD");
    let members = view["members"].as_array().cloned().unwrap_or_default();
    for m in &members {
        let flags: Vec<&str> =
            m["flags"].as_array().map(|f| f.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let relation = if m["root"] == true { "root" } else { m["relation"].as_str().unwrap_or("-") };
        outln!(
            "{:<64}  {:<10}  {:<10}  {:<5}  {}",
            m["id"].as_str().unwrap_or_default(),
            relation,
            m["state"].as_str().unwrap_or("unknown"),
            if m["held"] == true { "yes" } else { "no" },
            if flags.is_empty() { "-".to_string() } else { flags.join(",") },
        );
    }
    outln!("{} {}", members.len(), if members.len() == 1 { "member" } else { "members" });
    Ok(())
}

/// Parses an RFC 3339 time (`2027-01-31T00:00:00Z`, fractions and offsets allowed) into
/// milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64> {
    let bad = || anyhow!("{text:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64> {
        let s = text.get(range).ok_or_else(bad)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let ms: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        millis = ms.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = (((days * 24 + hour) * 60 + minute) * 60 + second - offset_min * 60) * 1000 + millis;
    u64::try_from(ms).map_err(|_| anyhow!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").expect("epoch"), 0);
        assert_eq!(parse_rfc3339_ms("2000-03-01T00:00:00Z").expect("leap"), 951_868_800_000);
        assert_eq!(parse_rfc3339_ms("2027-01-31T12:30:15.25Z").expect("frac"), 1_801_398_615_250);
        assert_eq!(parse_rfc3339_ms("2027-01-31T14:30:15.25+02:00").expect("offset"), 1_801_398_615_250);
        for bad in ["2027-01-31", "2027-13-01T00:00:00Z", "2027-01-31T00:00:00", "1969-12-31T23:59:59Z", "x"] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }
}
