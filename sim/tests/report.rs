//! `--report`: the timeline sampled over simulated time and the page drawn from it.

use mynet_sim::html::{self, Report, SECTIONS};
use mynet_sim::{SAMPLES_MAX, SimConfig, SimError, Violation, World, sample_interval_us};

/// 20 nodes for 2 minutes with crashes and partitions (more often than their profiles', so a
/// short run has several) and 4 content items.
fn faulty_run(timeline: bool) -> SimConfig {
    let mut config = SimConfig::new(5, 20, 120_000).with_faults("crash+partition").expect("known profiles");
    config.faults.crash_every_ms = 60_000;
    config.faults.partition_every_ms = 20_000;
    config.content = 4;
    config.timeline = timeline;
    config
}

fn self_contained(page: &str) {
    let lower = page.to_ascii_lowercase();
    for external in ["<script", "<link", "<img", "<iframe", "@import", "url(", "http://", "https://", "src="] {
        assert!(!lower.contains(external), "the page refers to something outside it: {external}");
    }
}

#[test]
fn a_report_plots_the_run_without_changing_it() {
    let mut plain = World::new(faulty_run(false));
    plain.run().expect("the run without a report passes");
    let mut sampled = World::new(faulty_run(true));
    sampled.run().expect("the run with a report passes");
    let (a, b) = (plain.summary(), sampled.summary());
    assert_eq!((&a.trace_hash, a.events), (&b.trace_hash, b.events), "sampling changed the run");
    assert!(plain.timeline().is_none(), "no samples unless asked for");

    let timeline = sampled.timeline().expect("samples were asked for");
    assert_eq!(timeline.interval_us, 1_000_000);
    let samples = &timeline.samples;
    assert_eq!(samples.len(), 121, "one sample a second from 0 s to 120 s");
    assert!(samples.iter().enumerate().all(|(i, s)| s.at_us == i as u64 * 1_000_000));
    assert!(
        samples
            .windows(2)
            .all(|w| w[0].safety_checks <= w[1].safety_checks && w[0].faults_injected <= w[1].faults_injected)
    );

    // Crashes show as dips in the nodes running while faults run (until 72 s), once every
    // node joined (within 2 s); a crashed node is back within 21 s.
    let crashes = b.faults_injected.get("crash").copied().unwrap_or(0);
    assert!(crashes >= 3, "the run crashes nodes: {:?}", b.faults_injected);
    assert!(samples[3..72].iter().any(|s| s.nodes_up < 20), "no dip in nodes up with {crashes} crashes");
    assert!(samples[3..].iter().all(|s| s.nodes_up + s.nodes_crashed == 20), "a node not running is a crashed one");
    assert!(samples[94..].iter().all(|s| s.nodes_up == 20), "every node is back after faults stop");
    let partitions = b.faults_injected.get("partition").copied().unwrap_or(0)
        + b.faults_injected.get("partition_one_way").copied().unwrap_or(0);
    assert!(partitions > 0, "the run partitions the network: {:?}", b.faults_injected);
    assert!(samples.iter().any(|s| s.nodes_partitioned > 0), "no partition in the samples");
    assert!(samples[118..].iter().all(|s| s.nodes_partitioned == 0), "partitions end by 118 s (72 s + at most 46 s)");

    // The last sample agrees with the summary.
    let last = samples.last().expect("samples");
    assert_eq!((last.nodes_up, last.nodes_ready, last.nodes_crashed), (20, b.ready_nodes, 0));
    assert_eq!((last.peers_min, last.peers_max), (b.peers_min, b.peers_max));
    assert!((last.peers_mean - b.peers_avg).abs() < 0.01, "{} vs {}", last.peers_mean, b.peers_avg);
    assert_eq!((last.replicas_complete, last.replicas_expected), (80, 80));
    assert_eq!(last.replicas_expected as usize, b.content.replicas_expected);
    assert_eq!(samples[0].replicas_expected, 0, "items are added from 5% of the run on");
    assert!(last.safety_checks > 1_000, "every node step is checked: {}", last.safety_checks);
    assert_eq!(last.faults_injected, b.faults_injected.values().sum::<u64>());

    let page = html::page(&Report::of(&sampled, &b, None).expect("sampled"));
    for title in SECTIONS {
        assert!(page.contains(&format!(">{title}</h2>")), "no section {title:?}");
    }
    self_contained(&page);
    assert!(page.contains("<svg") && page.contains("<polyline"), "charts are inline SVG");
    assert!(page.contains("<th>samples</th><td>121, every 1s</td>"));
    assert!(page.contains(&b.trace_hash), "the summary is on the page");
    assert!(page.contains(">passed<") && page.contains("0 violations"));
    assert!(!page.contains("failure</text>"));
}

#[test]
fn a_failed_run_is_reported_with_its_failure_point() {
    let mut config = SimConfig::new(2, 5, 20_000);
    config.timeline = true;
    let mut world = World::new(config);
    world.run().expect("run");
    let summary = world.summary();
    let failure = SimError::Invariant {
        violation: Violation::Storage("disk <full>".into()),
        node: 3,
        node_id: world.node_id(3),
        time_ms: 12_345,
        command: world.config().command(),
    };
    let page = html::page(&Report::of(&world, &summary, Some(&failure)).expect("sampled"));
    self_contained(&page);
    assert!(page.contains("invariant violated at 12.345 s"), "the headline names the failure");
    assert!(page.contains("storage: disk &lt;full&gt;"), "the violation is on the page, escaped");
    assert!(page.contains("failure</text>"), "the charts mark the failure point");
    assert!(page.contains("No <code>--content</code> workload"), "a run without content says so");
}

#[test]
fn samples_stay_bounded_in_long_runs() {
    for duration_us in [500_000, 90_000_000, 600_000_000, 3_600_000_000, 86_400_000_000] {
        let interval = sample_interval_us(duration_us);
        let samples = duration_us / interval + 2;
        assert!(samples as usize <= SAMPLES_MAX, "{duration_us} µs: {samples} samples");
        assert!(samples >= 50, "{duration_us} µs: only {samples} samples");
    }
    let mut config = SimConfig::new(1, 2, 3_600_000);
    config.timeline = true;
    let mut world = World::new(config);
    world.run().expect("run");
    let samples = &world.timeline().expect("sampled").samples;
    assert!((1_990..=SAMPLES_MAX).contains(&samples.len()), "{} samples in an hour", samples.len());
    assert_eq!(samples.last().map(|s| s.at_us), Some(3_600_000_000), "the last sample is the end of the run");
}
