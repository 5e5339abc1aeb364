//! `mynet`: run a node, inspect it, simulate a network, replay a node's event log.

mod accept;
mod api;
mod cli_content;
mod cli_ops;
mod cli_states;
mod content;
mod dashboard;
mod datadir;
mod devnet;
mod driver;
mod durability;
mod invite;
mod lan;
mod live_config;
mod metrics;
mod noise;
mod out;
mod replay;
mod sim_progress;
mod startup;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::datadir::{DEFAULT_DATA_DIR, DataDir};
use crate::out::outln;

#[derive(Parser)]
#[command(name = "mynet", version, about = "A node of MY Network: stores, verifies and replicates content")]
struct Cli {
    /// The node's data directory.
    #[arg(long, global = true, env = "MYNET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data dir, key and default configs if absent; print the identity as JSON.
    Init {
        /// Join the network of this peer address (from `mynet invite`): put it into
        /// `bootstrap.json`.
        #[arg(long, value_name = "ADDRESS")]
        join: Option<String>,
    },
    /// Print this node's peer address, one line another node joins with (`mynet init --join`,
    /// `mynet bootstrap add`).
    Invite {
        /// The address peers dial, when the node listens on every address (0.0.0.0, [::]).
        #[arg(long, value_name = "IP:PORT")]
        address: Option<std::net::SocketAddr>,
        /// Print `{"invite","node_id","address","network_id"}`.
        #[arg(long)]
        json: bool,
    },
    /// Edit the bootstrap list.
    Bootstrap {
        #[command(subcommand)]
        command: BootstrapCommand,
    },
    /// Run a node in the foreground until SIGINT/SIGTERM.
    Run,
    /// Print the running node's status: identity, uptime, peers, content, storage, sync,
    /// resources, health checks.
    Status {
        /// Print the status JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 s (in place on a terminal) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Print the running node's peers as a table.
    Peers {
        /// Print the status JSON (its `peers` and `blacklist`).
        #[arg(long)]
        json: bool,
    },
    /// Print the node's metrics in Prometheus text, or the history of the last samples.
    Metrics {
        /// The last samples (one every 5 s, at most 1,000) as a table.
        #[arg(long)]
        history: bool,
        /// With --history: print the samples as JSON.
        #[arg(long, requires = "history")]
        json: bool,
    },
    /// What the peers reported in their signed status broadcasts (every 30 s).
    Network {
        #[arg(long)]
        json: bool,
    },
    /// Print the address of the node's dashboard (a page served by its local API).
    Dashboard {
        #[arg(long)]
        json: bool,
    },
    /// Stream FILE into the running node's store; prints its content id.
    Add {
        file: PathBuf,
        /// Print `{"id","size","pieces"}`.
        #[arg(long)]
        json: bool,
        /// Seal the file with the registry's key `--key-id` on the way in (the item's id is the
        /// hash of the sealed bytes; its metadata records the plaintext's hash).
        #[arg(long, requires = "key_id")]
        encrypt: bool,
        /// The key to seal with (see `mynet key add`).
        #[arg(long, value_name = "KEY_ID", requires = "encrypt")]
        key_id: Option<String>,
        /// A tag for the item's metadata (repeatable); `preview` makes it a preview.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Make the item a member of the group rooted at item ROOT.
        #[arg(long, value_name = "ROOT")]
        group: Option<String>,
        /// How the member relates to the root: `decrypted`, `preview`, ...
        #[arg(long, value_name = "KIND", requires = "group")]
        relation: Option<String>,
    },
    /// Fetch item ID from the network if it is not held (resuming), then write it out.
    Get {
        id: String,
        /// Write to FILE (default: stdout).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Give up after this long (the node keeps what it fetched; run again to resume).
        #[arg(long, default_value = "1h", value_parser = parse_duration_ms)]
        timeout: u64,
        /// Write the plaintext of an encrypted item (its key must be in the key registry).
        #[arg(long)]
        decrypt: bool,
    },
    /// Keys for encrypted items: the registry in the data dir, and their published records.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Show the group item ID belongs to: members, states, held or not, integrity flags.
    Group {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List the items this node holds or fetches.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Drop the local copy of item ID.
    Rm { id: String },
    /// Re-hash every held piece; damaged pieces are dropped and fetched again.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Replay the node's event log through a fresh node and check every checkpoint.
    Replay(replay::ReplayArgs),
    /// Run a seeded simulation of many nodes; prints a JSON summary as the last line.
    Sim(SimArgs),
    /// Start N real nodes on 127.0.0.1..N, wired to each other, until Ctrl-C.
    Devnet(devnet::DevnetArgs),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a key (or take one from a file) into the registry and publish its record.
    Add {
        key_id: String,
        /// Read the key from FILE (32 raw bytes or 64 hex digits) instead of generating one.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// The record's end of validity, an RFC 3339 time (e.g. 2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        valid_until: Option<String>,
    },
    /// List the keys held here and the key records the network knows.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a key from the registry; `--revoke` also publishes its record as revoked.
    Rm {
        key_id: String,
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand)]
enum BootstrapCommand {
    /// Check a peer address (from `mynet invite`) and add it to `bootstrap.json`; a node with
    /// no bootstrap nodes yet joins the address's network.
    Add {
        address: String,
        /// Print `{"result","node_id","address","bootstrap_nodes"}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the merged config: each value, the layer it came from, and whether a change
    /// applies live or needs a restart.
    Show,
    /// Change FIELD to VALUE (JSON, or plain text for a string): checked, saved in
    /// node_config.json atomically, and applied to the running node when the field is live.
    Set {
        field: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    /// Seed of everything random in the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of honest nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Simulated duration: 500ms, 90s, 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = parse_duration_ms)]
    duration: u64,
    /// Fault profile: none, swarm (drawn from the seed), network, partition, crash, clock,
    /// byzantine, all.
    #[arg(long, default_value = "none")]
    faults: String,
    /// Keep node NODE's event log and write it to DIR (a data dir `mynet replay` reads).
    #[arg(long, num_args = 2, value_names = ["NODE", "DIR"])]
    dump_log: Option<Vec<String>>,
    /// If the run fails at a node, write that node's event log to DIR.
    #[arg(long, value_name = "DIR")]
    dump_on_failure: Option<PathBuf>,
    /// Write a self-contained HTML page to FILE: nodes up, peers, items replicated, faults and
    /// invariant checks over simulated time, the parameters and the summary (also on failure).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Run twice and compare event by event; report the first event where the runs differ.
    #[arg(long)]
    check_determinism: bool,
    /// Add N items of varied sizes (1 KiB to 16 MiB) at random nodes during the run; every
    /// honest node must hold all of them by the end.
    #[arg(long, default_value_t = 0, value_name = "N")]
    content: usize,
    /// Every `--content` item this many bytes (instead of varied sizes).
    #[arg(long, value_name = "BYTES")]
    content_size: Option<u64>,
    /// N pairs of concurrent conflicting metadata edits of `--content` items, each pair by two
    /// different publishers; every replica must converge on the conflict rule's winner.
    #[arg(long, default_value_t = 0, value_name = "N")]
    updates: usize,
    /// Nodes 0..P are the network's publishers (items and edits come from them); 0: any node
    /// may publish.
    #[arg(long, default_value_t = 0, value_name = "P")]
    publishers: usize,
    /// Node 0 publishes N metadata-only items at 1 s and nodes replicate `none`: measures
    /// reconciliation of a large catalogue that does not change.
    #[arg(long, default_value_t = 0, value_name = "N")]
    catalogue: usize,
    /// N DHT lookups of random running nodes from random running nodes once the network
    /// settled (60% to 85% of the run); the summary's `dht` gives hops and times.
    #[arg(long, default_value_t = 0, value_name = "N")]
    lookups: usize,
    /// Instead of `--lookups N`, every node looks up every other once, after faults heal:
    /// "every honest node finds every other" checked exhaustively (n(n-1) lookups).
    #[arg(long)]
    all_pairs: bool,
    /// PCT percent of the nodes vanish silently at half time, before the lookups (no reset,
    /// no refusal: packets to them go nowhere).
    #[arg(long, default_value_t = 0, value_name = "PCT")]
    dead: u32,
    /// LAN discovery only: the nodes form broadcast domains of SIZE nodes and start with no
    /// bootstrap list; each domain must connect on its own (the summary's `lan`).
    #[arg(long, default_value_t = 0, value_name = "SIZE")]
    lan: usize,
    /// N operator `get`s (60% to 85% of the run) of `--content` items, each at a node none of
    /// whose peers holds the item; nodes replicate `none`, so provider records must lead each
    /// to a holder (summary `dht.wants`, `dht.wants_served`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    wants: usize,
    /// The last PCT percent of the nodes are Sybils: real nodes whose every DHT answer names
    /// only Sybils (summary `dht.table_sybil_share`: their share of honest routing tables).
    #[arg(long, default_value_t = 0, value_name = "PCT")]
    sybils: u32,
}

fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 90s, 10m, 1h"))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Run));
    let dir = DataDir::new(cli.data_dir);
    let result = match cli.command {
        Command::Init { join } => init(&dir, join.as_deref()),
        Command::Invite { address, json } => invite::invite(&dir, address, json),
        Command::Bootstrap { command: BootstrapCommand::Add { address, json } } => {
            invite::bootstrap_add(&dir, &address, json)
        }
        Command::Run => return run(dir),
        Command::Status { json, watch } => cli_ops::status(&dir, json, watch),
        Command::Peers { json: true } => api::get(&dir, "/peers").map(|status| outln!("{}", pretty(&status))),
        Command::Peers { json: false } => api::get(&dir, "/peers").map(|status| print_peers(&status)),
        Command::Metrics { history, json } => cli_ops::metrics(&dir, history, json),
        Command::Network { json } => cli_ops::network(&dir, json),
        Command::Dashboard { json } => cli_ops::dashboard(&dir, json),
        Command::Add { file, json, encrypt, key_id, tags, group, relation } => {
            let options = cli_content::AddOptions { encrypt_with: key_id.filter(|_| encrypt), tags, group, relation };
            cli_content::add(&dir, &file, json, &options)
        }
        Command::Get { id, output, timeout, decrypt } => {
            cli_content::get(&dir, &id, output, std::time::Duration::from_millis(timeout), decrypt)
        }
        Command::Key { command } => match command {
            KeyCommand::Add { key_id, from_file, valid_until } => {
                cli_states::key_add(&dir, &key_id, from_file.as_deref(), valid_until.as_deref())
            }
            KeyCommand::Ls { json } => cli_states::key_ls(&dir, json),
            KeyCommand::Rm { key_id, revoke } => cli_states::key_rm(&dir, &key_id, revoke),
        },
        Command::Group { id, json } => cli_states::group(&dir, &id, json),
        Command::Ls { json } => cli_content::ls(&dir, json),
        Command::Rm { id } => cli_content::rm(&dir, &id),
        Command::Verify { json } => cli_content::verify(&dir, json),
        Command::Config { command: ConfigCommand::Show } => config_show(&dir),
        Command::Config { command: ConfigCommand::Set { field, value, json } } => {
            cli_ops::config_set(&dir, &field, &value, json)
        }
        Command::Replay(args) => return replay::run(&dir, &args),
        Command::Sim(args) => sim(args),
        Command::Devnet(args) => devnet::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(node: bool) {
    let default = if node { "info" } else { "warn" };
    // fjall reports routine maintenance at info; an operator only needs its warnings.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},fjall=warn,lsm_tree=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn init(dir: &DataDir, join: Option<&str>) -> Result<()> {
    // A bad address fails before anything is created.
    if let Some(address) = join {
        address.parse::<invite::Invite>()?;
    }
    let (identity, created) = dir.init()?;
    if let Some(address) = join {
        invite::bootstrap_add(dir, address, false)?;
    }
    let root = std::fs::canonicalize(dir.root()).unwrap_or_else(|_| dir.root().to_path_buf());
    outln!(
        "{}",
        json!({ "node_id": identity.node_id(), "public_key": identity.public_key(), "data_dir": root, "created": created })
    );
    Ok(())
}

fn run(dir: DataDir) -> ExitCode {
    // The driver runs on this thread (block_on); connection tasks run on the worker threads,
    // so Noise encryption and decryption proceed in parallel with the node.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(startup::run(dir)) {
        Ok(()) => {
            tracing::info!("node stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config_show(dir: &DataDir) -> Result<()> {
    let layered = dir.load_config()?;
    outln!("{}", pretty(&layered.config.provenance_json(&layered.sources)));
    Ok(())
}

fn print_peers(status: &serde_json::Value) {
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    outln!("{:<64}  {:<21}  {:<9}  {:>6}  {:<9}", "NODE ID", "ADDRESS", "DIRECTION", "UP(s)", "FOUND BY");
    for peer in &peers {
        let bootstrap = if peer["bootstrap"].as_bool() == Some(true) { " (bootstrap)" } else { "" };
        outln!(
            "{:<64}  {:<21}  {:<9}  {:>6}  {:<9}{bootstrap}",
            peer["node_id"].as_str().unwrap_or("?"),
            peer["address"].as_str().unwrap_or("?"),
            peer["direction"].as_str().unwrap_or("?"),
            peer["connected_s"].as_u64().unwrap_or(0),
            peer["found_by"].as_str().unwrap_or("-")
        );
    }
    outln!("{}", out::plural(peers.len(), "peer", "peers"));
    let banned = status["blacklist"].as_array().cloned().unwrap_or_default();
    if !banned.is_empty() {
        outln!("\nBLACKLIST ({})", banned.len());
        for b in &banned {
            outln!(
                "  {}  score {}  expires in {} s",
                b["offender"].as_str().unwrap_or("?"),
                b["score"].as_u64().unwrap_or(0),
                b["expires_in_s"].as_u64().unwrap_or(0)
            );
        }
    }
}

fn sim(args: SimArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let mut config = mynet_sim::SimConfig::new(args.seed, args.nodes, args.duration);
    config.content = args.content;
    if let Some(size) = args.content_size {
        config.content_sizes = vec![size; args.content];
    }
    config.updates = args.updates;
    config.publishers = args.publishers;
    config.catalogue = args.catalogue;
    if args.dead > 90 {
        bail!("--dead {} is more than 90 percent of the nodes", args.dead);
    }
    if args.dead > 0 && (args.content > 0 || args.catalogue > 0 || args.updates > 0) {
        bail!("--dead measures lookups; it cannot be combined with --content, --catalogue or --updates");
    }
    config.lookups = args.lookups;
    config.all_pairs = args.all_pairs;
    config.dead_pct = args.dead;
    let workloads = args.content > 0 || args.catalogue > 0 || args.updates > 0 || args.lookups > 0 || args.dead > 0;
    if args.lan > 0 && workloads {
        bail!(
            "--lan splits the network into domains that never meet; it cannot be combined with --content, --catalogue, --updates, --lookups or --dead"
        );
    }
    config.lan = args.lan;
    if args.wants > 0 && (args.content == 0 || args.dead > 0) {
        bail!("--wants asks for --content items (give --content N) and cannot be combined with --dead");
    }
    config.wants = args.wants;
    if args.sybils > 50 {
        bail!("--sybils {} is more than 50 percent of the nodes", args.sybils);
    }
    let others = args.content > 0 || args.catalogue > 0 || args.updates > 0 || args.wants > 0 || args.lan > 0;
    if args.sybils > 0 && others {
        bail!(
            "--sybils measures the DHT; it cannot be combined with --content, --catalogue, --updates, --wants or --lan"
        );
    }
    config.sybils_pct = args.sybils;
    if args.wants > 0 {
        config.node_config.replicate = mynet_core::config::Replicate::None;
    }
    let Some(mut config) = config.with_faults(&args.faults) else {
        bail!("unknown fault profile {:?}; choose one of {}", args.faults, mynet_sim::faults::PROFILE_NAMES.join(", "));
    };
    let dump = match &args.dump_log {
        Some(pair) => {
            let node: usize =
                pair[0].parse().with_context(|| format!("--dump-log NODE must be a node index, got {:?}", pair[0]))?;
            if node >= args.nodes {
                bail!("--dump-log node {node} does not exist (nodes are 0..{})", args.nodes);
            }
            config.keep_logs.push(node);
            // The whole history, not the retained tail: what is dumped is for debugging. (Only
            // kept logs hold records; retention does not change what a node does.)
            config.node_config.log_retain_bytes = u64::MAX;
            config.node_config.log_retain_ms = u64::MAX;
            Some((node, PathBuf::from(&pair[1])))
        }
        None => None,
    };
    if args.dump_on_failure.is_some() {
        config.keep_logs = (0..args.nodes).collect();
    }
    if let Some(path) = &args.report {
        if args.check_determinism {
            bail!("--report draws one run; it cannot be combined with --check-determinism");
        }
        // Before the run, which may be long.
        mynet_sim::html::check_writable(path).with_context(|| {
            format!("--report {}: cannot write there; name a file in a writable directory", path.display())
        })?;
        config.timeline = true;
    }
    if args.check_determinism {
        return check_determinism(config);
    }
    let command = config.command();
    let mut progress = sim_progress::SimProgress::new(config.duration_ms * 1000);
    let mut world = mynet_sim::World::new(config);
    let outcome = world.run_with_progress(|now_us| progress.update(now_us));
    progress.clear();
    if let Some((node, path)) = dump {
        replay::dump_sim_log(&world, node, &path)?;
        eprintln!(
            "wrote node {node}'s event log to {}; replay it with: mynet replay --data-dir {}",
            path.display(),
            path.display()
        );
    }
    let summary = world.summary();
    let report = args.report.as_deref().map(|path| write_report(&world, &summary, outcome.as_ref().err(), path));
    if let Err(err) = outcome {
        if let Some(Err(report_err)) = &report {
            eprintln!("error: {report_err:#}");
        }
        if let (Some(dir), Some(node)) = (&args.dump_on_failure, err.node()) {
            replay::dump_sim_log(&world, node, dir)?;
            eprintln!(
                "wrote the failing node {node}'s event log to {}; inspect it with: mynet replay --data-dir {} --events",
                dir.display(),
                dir.display()
            );
        }
        outln!("{}", json!({ "error": err.to_string(), "reproduce": command, "summary": summary }));
        bail!("{err}");
    }
    outln!("{}", serde_json::to_string(&summary)?);
    report.transpose().map(|_| ())
}

/// Writes the run's report page to `path` (atomically).
fn write_report(
    world: &mynet_sim::World,
    summary: &mynet_sim::Summary,
    failure: Option<&mynet_sim::SimError>,
    path: &std::path::Path,
) -> Result<()> {
    let report = mynet_sim::html::Report::of(world, summary, failure).context("the run kept no samples")?;
    mynet_sim::html::write_atomically(path, &mynet_sim::html::page(&report))
        .with_context(|| format!("writing the report to {}", path.display()))?;
    eprintln!("wrote the report to {}", path.display());
    Ok(())
}

/// Runs the same configuration twice, recording every event, and compares.
fn check_determinism(mut config: mynet_sim::SimConfig) -> Result<()> {
    config.record_trace = true;
    let command = config.command();
    let run = |config: mynet_sim::SimConfig| {
        let mut world = mynet_sim::World::new(config);
        let outcome = world.run().map_err(|e| e.to_string());
        (world, outcome)
    };
    let (a, outcome_a) = run(config.clone());
    let (b, outcome_b) = run(config);
    let (sa, sb) = (a.summary(), b.summary());
    if let Some(i) = mynet_sim::first_divergence(a.trace_events(), b.trace_events()) {
        let show = |w: &mynet_sim::World| w.trace_events().get(i).map_or("(no event)".to_string(), |e| e.to_string());
        outln!(
            "{}",
            json!({ "deterministic": false, "first_divergent_event": i, "run_a": show(&a), "run_b": show(&b), "reproduce": command })
        );
        bail!("nondeterminism: the two runs first differ at event {i}: {} vs {}", show(&a), show(&b));
    }
    if sa.trace_hash != sb.trace_hash || outcome_a != outcome_b {
        outln!(
            "{}",
            json!({ "deterministic": false, "trace_hash_a": sa.trace_hash, "trace_hash_b": sb.trace_hash, "reproduce": command })
        );
        bail!("nondeterminism: same events but different final node states");
    }
    outln!(
        "{}",
        json!({ "deterministic": true, "events": sa.events, "trace_hash": sa.trace_hash, "outcome": outcome_a.err(), "seed": sa.seed })
    );
    Ok(())
}
