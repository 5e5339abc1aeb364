//! `mynet replay`: run a node's event log through a fresh node and check its checkpoints.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mynet_storage::log::{EventLog, LogRecord};
use mynet_storage::{FjallLog, keyfile, read_records};
use serde_json::json;

use crate::datadir::DataDir;

/// Options of `mynet replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Stop after the record with this sequence number.
    #[arg(long)]
    until: Option<u64>,
    /// Print every record and the outputs it produced.
    #[arg(long)]
    events: bool,
    /// Print the node's state as JSON at the stop point.
    #[arg(long)]
    state: bool,
}

/// Runs the replay; exit 0 when every checkpoint was reproduced, 1 on divergence or error.
pub fn run(dir: &DataDir, args: &ReplayArgs) -> ExitCode {
    match replay(dir, args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn replay(dir: &DataDir, args: &ReplayArgs) -> Result<bool> {
    let log_path = dir.log_path();
    if !log_path.is_dir() {
        bail!("no event log at {} (is {} a node's data dir?)", log_path.display(), dir.root().display());
    }
    let identity = keyfile::load_key(&dir.key_path())?;
    let log = FjallLog::open(&log_path)
        .map_err(|e| anyhow::anyhow!("{e}; if a node is running on this data dir, stop it first"))?;
    let started = Instant::now();
    let mut observer = |seq: u64, record: &LogRecord, outputs: &[mynet_core::Output], _node: &mynet_core::Node| {
        if args.events {
            print_record(seq, record, outputs);
        }
    };
    let (report, node) =
        mynet_storage::replay(&log, &identity, mynet_storage::Start::Earliest, args.until, &mut observer)?;
    let elapsed = started.elapsed().as_secs_f64();
    if args.state
        && let Some(node) = &node
    {
        println!("{}", serde_json::to_string_pretty(&node.state_json())?);
    }
    let summary = json!({
        "records": report.records,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "restarts": report.restarts,
        "outputs": report.outputs,
        "stopped_at": report.stopped_at,
        "wall_time_s": elapsed,
        "events_per_s": if elapsed > 0.0 { (report.events as f64 / elapsed).round() } else { 0.0 },
        "reproduced": report.divergence.is_none(),
        "divergence": report.divergence.as_ref().map(|d| d.to_string()),
    });
    if let Some(divergence) = &report.divergence {
        eprintln!("replay diverged: {divergence}");
    }
    println!("{summary}");
    Ok(report.divergence.is_none())
}

fn print_record(seq: u64, record: &LogRecord, outputs: &[mynet_core::Output]) {
    match record {
        LogRecord::Genesis { node_id, rng_seed, time, .. } => {
            println!("#{seq} t={}us genesis node {node_id} seed {rng_seed}", time.mono.0)
        }
        LogRecord::Input { time, input } => {
            println!("#{seq} t={}us input {}: {}", time.mono.0, input.kind(), describe_input(input))
        }
        LogRecord::Checkpoint { state_hash, .. } => {
            println!("#{seq} checkpoint state {}", mynet_core::hex::encode(&state_hash[..8]))
        }
    }
    for output in outputs {
        match output {
            mynet_core::Output::Event(event) => println!("    event: {event}"),
            mynet_core::Output::Send { conn, bytes } => println!("    send {conn}: {} bytes", bytes.len()),
            other => println!("    {other:?}"),
        }
    }
}

fn describe_input(input: &mynet_core::Input) -> String {
    use mynet_core::Input;
    match input {
        Input::Incoming { conn, addr } => format!("{conn} from {addr}"),
        Input::Secured { conn, .. } => format!("{conn}"),
        Input::Received { conn, bytes } => format!("{conn}: {} bytes", bytes.len()),
        Input::Closed { conn, reason } => format!("{conn}: {reason}"),
        Input::Restart { rng_seed, .. } => format!("seed {rng_seed}"),
        Input::Tick | Input::Shutdown => String::new(),
    }
}

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
    for item in read_records(source) {
        let (_, record) = item?;
        log.append(&record)?;
    }
    log.sync()?;
    Ok(())
}
