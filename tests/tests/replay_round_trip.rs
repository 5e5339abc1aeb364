//! A simulated node's log, written in the production format, replays exactly.

use mynet_sim::SimConfig;
use mynet_storage::log::EventLog;
use mynet_storage::{FjallLog, Start, replay};
use mynet_tests::run_world;

#[test]
fn simulated_logs_replay_to_the_same_checkpoints() {
    let mut config = SimConfig::new(11, 30, 300_000);
    config.keep_logs = vec![0, 7];
    config.node_config.checkpoint_interval_events = 20;
    let world = run_world(config);
    for node in [0, 7] {
        let log = world.memory_log(node).expect("kept");
        let (report, replayed) = replay(log, world.identity(node), Start::Earliest, None, None).expect("replays");
        assert_eq!(report.divergence, None);
        assert!(report.checkpoints >= 2, "node {node}: {report:?}");
        let replayed = replayed.expect("node");
        let live = world.node(node).expect("started");
        assert_eq!(replayed.state_hash(), live.state_hash(), "replay ends in the live node's state");
        assert_eq!(replayed.output_hash(), live.output_hash());
    }
}

#[test]
fn a_log_copied_into_fjall_replays_and_stopping_early_works() {
    let mut config = SimConfig::new(12, 10, 120_000);
    config.keep_logs = vec![3];
    let world = run_world(config);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = FjallLog::open(dir.path()).expect("open");
    log.import(world.memory_log(3).expect("kept")).expect("import");
    let (full, _) = replay(&log, world.identity(3), Start::Earliest, None, None).expect("replays");
    assert_eq!(full.divergence, None);
    let mut seen = 0;
    let (partial, _) =
        replay(&log, world.identity(3), Start::Earliest, Some(5), Some(&mut |_, _, _, _| seen += 1)).expect("replays");
    assert_eq!(partial.stopped_at, Some(5));
    assert_eq!(seen, 6);
}

/// Regression: `mynet sim --dump-log` copied a log whose head had been cut by retention record
/// by record from seq 0, without its snapshots, so the dump could not be replayed ("record 0
/// should be a genesis record").
#[test]
fn a_cut_log_dumped_to_fjall_keeps_its_snapshots_and_numbering() {
    let mut config = SimConfig::new(13, 20, 4 * 3_600_000);
    config.keep_logs = vec![4];
    config.node_config.snapshot_interval_events = 200;
    config.node_config.log_retain_bytes = 20_000;
    let world = run_world(config);
    let source = world.memory_log(4).expect("kept");
    assert!(source.first_seq() > 0, "retention cut the head of the log");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = FjallLog::open(dir.path()).expect("open");
    log.import(source).expect("import");
    drop(log);
    let log = FjallLog::open(dir.path()).expect("reopen");
    assert_eq!((log.first_seq(), log.next_seq()), (source.first_seq(), source.next_seq()));
    let (report, replayed) = replay(&log, world.identity(4), Start::Earliest, None, None).expect("replays");
    assert_eq!(report.divergence, None);
    assert_eq!(report.from_snapshot, Some(source.first_seq()));
    assert_eq!(replayed.expect("node").state_hash(), world.node(4).expect("running").state_hash());
}

/// Content never enters the log (pieces are logged as id, index and hash), yet replay makes
/// the same decisions: every checkpoint of a node that fetched and served items reproduces.
#[test]
fn logs_of_nodes_that_transferred_content_replay_exactly_and_hold_no_content_bytes() {
    let mut config = SimConfig::new(14, 8, 300_000);
    config.keep_logs = vec![0, 5];
    config.content = 12;
    config.node_config.checkpoint_interval_events = 50;
    let world = run_world(config);
    for node in [0, 5] {
        let log = world.memory_log(node).expect("kept");
        let live = world.node(node).expect("running");
        assert!(live.content().items().values().any(|i| i.complete()), "node {node} holds content");
        let (report, replayed) = replay(log, world.identity(node), Start::Earliest, None, None).expect("replays");
        assert_eq!(report.divergence, None);
        let replayed = replayed.expect("node");
        assert_eq!(replayed.state_hash(), live.state_hash(), "node {node}: replay ends in the live state");
        assert_eq!(replayed.output_hash(), live.output_hash());
        // The log is small beside what moved through the node: references, not bytes.
        let held: u64 = live.content().items().values().filter(|i| i.complete()).map(|i| i.size).sum();
        let log_bytes = log.bytes() as u64;
        assert!(log_bytes * 4 < held, "node {node}: {log_bytes} log bytes for {held} content bytes");
    }
}
