//! A simulated node's log, written in the production format, replays exactly.

use mynet_sim::SimConfig;
use mynet_storage::log::EventLog;
use mynet_storage::{FjallLog, Start, read_records, replay};
use mynet_tests::run_world;

#[test]
fn simulated_logs_replay_to_the_same_checkpoints() {
    let mut config = SimConfig::new(11, 30, 300_000);
    config.keep_logs = vec![0, 7];
    config.node_config.checkpoint_interval_events = 20;
    let world = run_world(config);
    for node in [0, 7] {
        let log = world.memory_log(node).expect("kept");
        let (report, replayed) =
            replay(log, world.identity(node), Start::Earliest, None, &mut |_, _, _, _| {}).expect("replays");
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
    for item in read_records(world.memory_log(3).expect("kept")) {
        log.append(&item.expect("decodes").1).expect("append");
    }
    log.sync().expect("sync");
    let (full, _) = replay(&log, world.identity(3), Start::Earliest, None, &mut |_, _, _, _| {}).expect("replays");
    assert_eq!(full.divergence, None);
    let mut seen = 0;
    let (partial, _) =
        replay(&log, world.identity(3), Start::Earliest, Some(5), &mut |_, _, _, _| seen += 1).expect("replays");
    assert_eq!(partial.stopped_at, Some(5));
    assert_eq!(seen, 6);
}
