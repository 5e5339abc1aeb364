//! The report page of a simulated run (`mynet sim --report FILE`): one self-contained HTML file
//! with the run's headline figures, charts of its [`Timeline`] over simulated time, its
//! parameters and its summary JSON.
//!
//! Self-contained means nothing is fetched: the styles are inline, the charts are SVG drawn
//! here, and there is no script at all, so the page reads the same offline, with JavaScript
//! off, or attached to a bug report.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::faults::FaultProfile;
use crate::world::{EVENTS_MAX, Sample, SimConfig, SimError, Summary, Timeline, World};

/// Everything the page shows.
pub struct Report<'a> {
    pub config: &'a SimConfig,
    /// The summary the run printed.
    pub summary: &'a Summary,
    pub timeline: &'a Timeline,
    /// Why the run failed, if it did.
    pub failure: Option<&'a SimError>,
}

impl<'a> Report<'a> {
    /// The report of `world`'s run, if it was sampled ([`SimConfig::timeline`]).
    pub fn of(world: &'a World, summary: &'a Summary, failure: Option<&'a SimError>) -> Option<Report<'a>> {
        Some(Report { config: world.config(), summary, timeline: world.timeline()?, failure })
    }
}

/// Section titles, in page order.
pub const SECTIONS: [&str; 8] = [
    "Outcome",
    "Nodes up",
    "Peers per node",
    "Items replicated",
    "Faults active",
    "Invariant checks",
    "Parameters",
    "Summary JSON",
];

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
code,pre{font:12px/1.4 ui-monospace,monospace}pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:0}.cards div{border:1px solid #ddd;border-radius:4px;padding:.4em .7em;min-width:9em}
.cards dt{font-size:.8em;color:#666}.cards dd{margin:0;font-size:1.15em;font-weight:600}
.ok{color:#17692b}.bad{color:#b00020}table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
th{font-weight:normal;color:#555}ul.legend{list-style:none;padding:0;margin:.2em 0;display:flex;flex-wrap:wrap;gap:1.2em}
.sw{display:inline-block;width:1.6em;height:.35em;vertical-align:middle;margin-right:.4em}
svg{display:block;width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#555}
.note{color:#666}";

/// The page, as one HTML document.
pub fn page(report: &Report<'_>) -> String {
    let mut html = String::with_capacity(64 * 1024);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ =
        writeln!(html, "<title>mynet sim report: seed {}, {} nodes</title>", report.config.seed, report.config.nodes);
    let _ = writeln!(html, "<style>\n{STYLE}\n</style>\n</head>\n<body>");
    html.push_str("<h1>mynet simulation report</h1>\n");
    let _ = writeln!(html, "<p><code>{}</code></p>", esc(&report.config.command()));
    let plots = Plots::new(report);
    outcome(&mut html, report);
    plots.nodes(&mut html);
    plots.peers(&mut html);
    plots.items(&mut html);
    plots.faults(&mut html);
    plots.checks(&mut html);
    parameters(&mut html, report);
    let json = serde_json::to_string_pretty(report.summary).unwrap_or_else(|e| format!("(not encodable: {e})"));
    let _ = writeln!(html, "<h2 id=\"summary\">{}</h2>\n<pre>{}</pre>", SECTIONS[7], esc(&json));
    html.push_str("</body>\n</html>\n");
    html
}

/// The headline figures: they are plain text, readable without the charts.
fn outcome(html: &mut String, report: &Report<'_>) {
    let (summary, last) = (report.summary, report.timeline.samples.last());
    let (verdict, class) = match report.failure {
        None => ("passed".to_string(), "ok"),
        Some(SimError::Invariant { time_ms, .. }) => (format!("invariant violated at {}", exact(*time_ms)), "bad"),
        Some(SimError::Liveness { .. }) => ("liveness failed".to_string(), "bad"),
        Some(SimError::Runaway { .. }) => (format!("stopped after {} events", thousands(EVENTS_MAX)), "bad"),
    };
    let checks = last.map_or(0, |s| s.safety_checks);
    let violations = usize::from(matches!(report.failure, Some(SimError::Invariant { .. })));
    let faults: u64 = summary.faults_injected.values().sum();
    let mut cards = vec![
        ("result", format!("<span class=\"{class}\">{}</span>", esc(&verdict))),
        ("seed", summary.seed.to_string()),
        ("nodes", format!("{} honest, {} adversaries", summary.nodes, summary.adversaries)),
        ("simulated", time((summary.sim_time_s * 1e6) as u64)),
        ("wall time", format!("{:.1} s", summary.wall_time_s)),
        ("events", thousands(summary.events)),
        ("nodes up at the end", last.map_or("-".into(), |s| format!("{} of {}", s.nodes_up, summary.nodes))),
        ("peers min / mean / max", format!("{} / {:.2} / {}", summary.peers_min, summary.peers_avg, summary.peers_max)),
        ("connected", summary.connected.to_string()),
        ("fault events", format!("{} ({})", thousands(faults), esc(&summary.faults.name))),
        ("safety checks", format!("{}; {violations} violations", thousands(checks))),
    ];
    if report.config.content > 0 {
        let c = &summary.content;
        cards.insert(9, ("replicas complete", format!("{} of {}", c.replicas_complete, c.replicas_expected)));
    }
    let _ = writeln!(html, "<h2 id=\"outcome\">{}</h2>\n<dl class=\"cards\">", SECTIONS[0]);
    for (name, value) in cards {
        let _ = writeln!(html, "<div><dt>{name}</dt><dd>{value}</dd></div>");
    }
    html.push_str("</dl>\n");
    let _ = writeln!(html, "<p>trace hash <code>{}</code></p>", esc(&summary.trace_hash));
    if let Some(failure) = report.failure {
        let _ = writeln!(html, "<pre class=\"bad\">{}</pre>", esc(&failure.to_string()));
    }
}

/// The run's settings: the command that reproduces it, the workload and the fault profile.
fn parameters(html: &mut String, report: &Report<'_>) {
    let (config, timeline) = (report.config, report.timeline);
    let mut rows = vec![
        ("reproduce", format!("<code>{}</code>", esc(&config.command()))),
        ("seed", config.seed.to_string()),
        ("honest nodes", config.nodes.to_string()),
        ("adversaries", report.summary.adversaries.to_string()),
        ("duration", time(config.duration_ms * 1000)),
        ("nodes join within", time(config.join_spread_ms() * 1000)),
        ("faults stop at", format!("{} ({:.0}% of the run)", time(config.heal_at_us()), config.heal_fraction * 100.0)),
        ("fault profile", esc(&config.faults.name)),
    ];
    let workload = [
        ("content items", config.content),
        ("updates", config.updates),
        ("publishers", config.publishers),
        ("catalogue items", config.catalogue),
        ("lookups", config.lookups),
        ("dead nodes, %", config.dead_pct as usize),
        ("wants", config.wants),
        ("sybils, %", config.sybils_pct as usize),
        ("LAN domain size", config.lan),
    ];
    rows.extend(workload.into_iter().filter(|(_, n)| *n > 0).map(|(name, n)| (name, n.to_string())));
    if config.all_pairs {
        rows.push(("all-pairs lookups", "yes".into()));
    }
    let samples = timeline.samples.len();
    rows.push(("samples", format!("{samples}, every {}", time(timeline.interval_us))));
    let _ = writeln!(html, "<h2 id=\"parameters\">{}</h2>\n<table>", SECTIONS[6]);
    for (name, value) in rows {
        let _ = writeln!(html, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    html.push_str("</table>\n");
    profile_table(html, &config.faults);
}

/// The fault profile's non-zero rates.
fn profile_table(html: &mut String, profile: &FaultProfile) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(profile) else { return };
    let set: Vec<_> =
        fields.iter().filter(|(name, v)| *name != "name" && v.as_f64().is_some_and(|x| x != 0.0)).collect();
    if set.is_empty() {
        html.push_str("<p class=\"note\">The profile injects no faults.</p>\n");
        return;
    }
    let _ = writeln!(html, "<p>Fault profile <code>{}</code>:</p>\n<table>", esc(&profile.name));
    for (name, value) in set {
        let _ = writeln!(html, "<tr><th>{}</th><td>{value}</td></tr>", esc(name));
    }
    html.push_str("</table>\n");
}

/// Whether the profile injects anything beyond the latency jitter every run has.
fn injects_faults(profile: &FaultProfile) -> bool {
    let quiet =
        FaultProfile { name: profile.name.clone(), jitter_us_max: profile.jitter_us_max, ..FaultProfile::default() };
    *profile != quiet
}

/// The charts of the timeline, sharing a time axis, the faults window and the failure mark.
struct Plots<'a> {
    report: &'a Report<'a>,
    samples: &'a [Sample],
    frame: Frame,
}

impl<'a> Plots<'a> {
    fn new(report: &'a Report<'a>) -> Plots<'a> {
        let samples = report.timeline.samples.as_slice();
        let end_us = samples.last().map_or(0, |s| s.at_us).max(report.config.duration_ms * 1000).max(1);
        let faults_until_us = injects_faults(&report.config.faults).then(|| report.config.heal_at_us().min(end_us));
        let failure_us = match report.failure {
            Some(SimError::Invariant { time_ms, .. }) => Some(time_ms * 1000),
            Some(SimError::Runaway { .. }) => samples.last().map(|s| s.at_us),
            Some(SimError::Liveness { .. }) | None => None,
        };
        let frame = Frame { times_us: samples.iter().map(|s| s.at_us).collect(), end_us, faults_until_us, failure_us };
        Plots { report, samples, frame }
    }

    fn series(&self, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples.iter().map(f).collect()
    }

    fn nodes(&self, html: &mut String) {
        let lines = [
            Line { label: "running", color: BLUE, values: self.series(|s| s.nodes_up as f64) },
            Line { label: "ready", color: GREEN, values: self.series(|s| s.nodes_ready as f64) },
            Line { label: "crashed", color: RED, values: self.series(|s| s.nodes_crashed as f64) },
        ];
        let note = format!(
            "Honest nodes running (started, not crashed), of {}; those in phase ready; those down after a crash.",
            self.report.config.nodes
        );
        section(html, SECTIONS[1], &note, &self.frame.svg(&lines, None));
    }

    fn peers(&self, html: &mut String) {
        let band = Band {
            label: "min to max",
            color: BLUE,
            low: self.series(|s| s.peers_min as f64),
            high: self.series(|s| s.peers_max as f64),
        };
        let lines = [
            Line { label: "mean", color: BLUE, values: self.series(|s| s.peers_mean) },
            Line { label: "min", color: ORANGE, values: band.low.clone() },
            Line { label: "max", color: GREY, values: band.high.clone() },
        ];
        let note = format!(
            "Established peers (transient DHT contacts excluded) across running honest nodes; target {}.",
            self.report.config.node_config.target_peers
        );
        section(html, SECTIONS[2], &note, &self.frame.svg(&lines, Some(&band)));
    }

    fn items(&self, html: &mut String) {
        if self.report.config.content == 0 {
            let _ = writeln!(
                html,
                "<h2>{}</h2>\n<p class=\"note\">No <code>--content</code> workload in this run.</p>",
                SECTIONS[3]
            );
            return;
        }
        let lines = [
            Line { label: "complete", color: GREEN, values: self.series(|s| s.replicas_complete as f64) },
            Line { label: "expected", color: GREY, values: self.series(|s| s.replicas_expected as f64) },
        ];
        let note = "(node, item) pairs: items held completely by running replicating nodes, against the items \
                    added so far times the replicating nodes.";
        section(html, SECTIONS[3], note, &self.frame.svg(&lines, None));
    }

    fn faults(&self, html: &mut String) {
        let lines = [
            Line { label: "partitioned", color: PURPLE, values: self.series(|s| s.nodes_partitioned as f64) },
            Line { label: "crashed", color: RED, values: self.series(|s| s.nodes_crashed as f64) },
            Line { label: "clock jumped", color: ORANGE, values: self.series(|s| s.clocks_jumped as f64) },
        ];
        let window = match self.frame.faults_until_us {
            Some(until) => {
                format!("New faults start until {} (shaded); one running then may last longer.", time(until))
            }
            None => "The profile injects no faults.".to_string(),
        };
        let note = format!(
            "Honest nodes affected at each moment: cut off by a partition, down after a crash, clock jumped. {window}"
        );
        section(html, SECTIONS[4], &note, &self.frame.svg(&lines, None));
        let events =
            [Line { label: "fault events so far", color: RED, values: self.series(|s| s.faults_injected as f64) }];
        html.push_str(&self.frame.svg(&events, None));
        let counts = &self.report.summary.faults_injected;
        if !counts.is_empty() {
            html.push_str("<table>\n");
            for (kind, n) in counts {
                let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(kind), thousands(*n));
            }
            html.push_str("</table>\n");
        }
    }

    fn checks(&self, html: &mut String) {
        let lines = [Line { label: "safety checks", color: GREEN, values: self.series(|s| s.safety_checks as f64) }];
        let verdict = match self.report.failure {
            Some(SimError::Invariant { time_ms, violation, node, .. }) => {
                format!(
                    "<span class=\"bad\">violated at {} (node {node}): {}</span>",
                    exact(*time_ms),
                    esc(&violation.to_string())
                )
            }
            Some(SimError::Liveness { failure, .. }) => {
                format!(
                    "0 safety violations; <span class=\"bad\">liveness failed at the end: {}</span>",
                    esc(&failure.to_string())
                )
            }
            Some(SimError::Runaway { .. }) => "0 safety violations; the run was stopped (too many events).".to_string(),
            None => "<span class=\"ok\">0 violations</span>; liveness held at the end.".to_string(),
        };
        let note = format!(
            "Node steps whose safety invariants were checked, so far (connection limits, no traffic before the \
             handshake, verified peer tables, durable pieces, logs that replay): {verdict}"
        );
        section(html, SECTIONS[5], &note, &self.frame.svg(&lines, None));
    }
}

const BLUE: &str = "#1f77b4";
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";
const ORANGE: &str = "#ff7f0e";
const PURPLE: &str = "#9467bd";
const GREY: &str = "#7f7f7f";

/// One series of a chart, a value per sample.
struct Line<'a> {
    label: &'a str,
    color: &'static str,
    values: Vec<f64>,
}

/// A shaded range between two series.
struct Band<'a> {
    label: &'a str,
    color: &'static str,
    low: Vec<f64>,
    high: Vec<f64>,
}

fn section(html: &mut String, title: &str, note: &str, svg: &str) {
    let _ = writeln!(html, "<h2>{title}</h2>\n<p class=\"note\">{note}</p>");
    html.push_str(svg);
}

/// The legend, with each series' last value: the figures stay readable as text.
fn legend(lines: &[Line<'_>], band: Option<&Band<'_>>) -> String {
    let mut html = String::from("<ul class=\"legend\">");
    for line in lines {
        let last = line.values.last().map_or("-".to_string(), |v| figure(*v));
        let _ = write!(
            html,
            "<li><span class=\"sw\" style=\"background:{}\"></span>{} (end: {last})</li>",
            line.color,
            esc(line.label)
        );
    }
    if let Some(band) = band {
        let _ = write!(
            html,
            "<li><span class=\"sw\" style=\"background:{};opacity:.25\"></span>{}</li>",
            band.color, band.label
        );
    }
    html.push_str("</ul>\n");
    html
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// What every chart shares: sample times, the time axis, the faults window, the failure mark.
struct Frame {
    times_us: Vec<u64>,
    end_us: u64,
    faults_until_us: Option<u64>,
    failure_us: Option<u64>,
}

impl Frame {
    fn x(&self, at_us: u64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * at_us as f64 / self.end_us as f64
    }

    fn y(value: f64, top: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - value / top)
    }

    /// A chart of `lines` (and a shaded `band`) over the run, with its legend.
    fn svg(&self, lines: &[Line<'_>], band: Option<&Band<'_>>) -> String {
        let highest = lines.iter().flat_map(|l| l.values.iter()).copied().fold(0.0, f64::max);
        let step = nice_step(highest / 5.0);
        let top = ((highest / step).ceil() * step).max(step);
        let mut svg = legend(lines, band);
        let _ = writeln!(
            svg,
            "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
            esc(&lines.iter().map(|l| l.label).collect::<Vec<_>>().join(", "))
        );
        if let Some(until) = self.faults_until_us {
            let (x0, x1) = (self.x(0), self.x(until));
            let _ = writeln!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fbe3e3\"><title>faults active</title></rect>",
                x1 - x0,
                HEIGHT - TOP - BOTTOM
            );
        }
        self.axes(&mut svg, step, top);
        if let Some(band) = band {
            self.band(&mut svg, band, top);
        }
        for line in lines {
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
                line.color,
                self.points(&line.values, top),
                esc(line.label)
            );
        }
        if let Some(at) = self.failure_us {
            let x = self.x(at);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{RED}\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{RED}\">failure</text>",
                HEIGHT - BOTTOM,
                x + 3.0,
                TOP + 10.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    fn axes(&self, svg: &mut String, step: f64, top: f64) {
        let (x0, x1, bottom) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM);
        let mut value = 0.0;
        while value <= top + step / 2.0 {
            let y = Frame::y(value, top);
            let _ = writeln!(
                svg,
                "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 6.0,
                y + 4.0,
                axis_label(value)
            );
            value += step;
        }
        let tick_us = time_step_us(self.end_us);
        let mut at = 0;
        while at <= self.end_us {
            let x = self.x(at);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 4.0,
                bottom + 16.0,
                time(at)
            );
            at += tick_us;
        }
        let _ = writeln!(svg, "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"#999\"/>");
    }

    fn band(&self, svg: &mut String, band: &Band<'_>, top: f64) {
        let mut points = String::new();
        for (at, value) in self.times_us.iter().zip(&band.high) {
            let _ = write!(points, "{:.1},{:.1} ", self.x(*at), Frame::y(*value, top));
        }
        for (at, value) in self.times_us.iter().zip(&band.low).rev() {
            let _ = write!(points, "{:.1},{:.1} ", self.x(*at), Frame::y(*value, top));
        }
        let _ = writeln!(
            svg,
            "<polygon fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\" points=\"{}\"><title>{}</title></polygon>",
            band.color,
            points.trim_end(),
            esc(band.label)
        );
    }

    /// The polyline's points; a point between two equal neighbours adds nothing and is left out.
    fn points(&self, values: &[f64], top: f64) -> String {
        let mut points = String::new();
        for (i, (at, value)) in self.times_us.iter().zip(values).enumerate() {
            let flat = i > 0 && i + 1 < values.len() && values[i - 1] == *value && values[i + 1] == *value;
            if !flat {
                let _ = write!(points, "{:.1},{:.1} ", self.x(*at), Frame::y(*value, top));
            }
        }
        points.trim_end().to_string()
    }
}

/// 1, 2 or 5 times a power of ten, at least `x` and at least 1 (the series count things).
fn nice_step(x: f64) -> f64 {
    if x.is_nan() || x <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|step| *step >= x).unwrap_or(10.0 * magnitude)
}

/// A time-axis step giving at most 10 ticks.
fn time_step_us(end_us: u64) -> u64 {
    const STEPS_MS: [u64; 22] = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
        900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000,
    ];
    let step_ms = STEPS_MS.into_iter().find(|ms| end_us / (ms * 1000) <= 10).unwrap_or(86_400_000);
    step_ms * 1000
}

/// A simulated time, as precise as a label needs: `850ms`, `4.2s`, `42s`, `3m20s`, `1h5m`.
pub fn time(us: u64) -> String {
    let ms = us / 1000;
    let s = ms / 1000;
    match s {
        0 if ms == 0 => "0".to_string(),
        0 => format!("{ms}ms"),
        1..10 if !ms.is_multiple_of(1000) => format!("{s}.{}s", ms % 1000 / 100),
        1..60 => format!("{s}s"),
        60..3600 if !s.is_multiple_of(60) => format!("{}m{}s", s / 60, s % 60),
        60..3600 => format!("{}m", s / 60),
        _ if s % 3600 / 60 != 0 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// A simulated time to the millisecond: `12.345 s`.
fn exact(time_ms: u64) -> String {
    format!("{}.{:03} s", thousands(time_ms / 1000), time_ms % 1000)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An axis label: `5`, `2.5`, `15k`, `1.2M`.
fn axis_label(x: f64) -> String {
    let (scaled, unit) = match x {
        x if x >= 1e6 => (x / 1e6, "M"),
        x if x >= 1e3 => (x / 1e3, "k"),
        x => (x, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// A figure in a legend: whole numbers in full (`15,480`), others to 2 places.
fn figure(x: f64) -> String {
    if x.fract() == 0.0 && x >= 0.0 { thousands(x as u64) } else { format!("{x:.2}") }
}

/// Text made safe inside HTML elements and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Checks before a run that `path` can be written: it names a file (not a directory) in a
/// directory that takes a new file.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"));
    }
    let probe = temp_path(path)?;
    fs::File::create(&probe)?;
    fs::remove_file(&probe)
}

/// Writes `contents` to `path` atomically: a temporary file beside it, synced, renamed over it.
/// A reader sees the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let temp = temp_path(path)?;
    let written = fs::File::create(&temp).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    let result = written.and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "it names no file"));
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_a_person_writes_them() {
        assert_eq!(time(0), "0");
        assert_eq!(time(850_000), "850ms");
        assert_eq!(time(42_000_000), "42s");
        assert_eq!(time(42_700_000), "42s");
        assert_eq!(time(9_960_000), "9.9s");
        assert_eq!(exact(3_723_004), "3,723.004 s");
        assert_eq!(time(1_500_000), "1.5s");
        assert_eq!(time(200_000_000), "3m20s");
        assert_eq!(time(600_000_000), "10m");
        assert_eq!(time(3_900_000_000), "1h5m");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(
            (axis_label(5_000.0), axis_label(2_500_000.0), axis_label(2.5)),
            ("5k".into(), "2.5M".into(), "2.5".into())
        );
        assert_eq!((figure(15_480.0), figure(12.345)), ("15,480".into(), "12.35".into()));
    }

    #[test]
    fn axis_steps_are_round_and_few() {
        assert_eq!(nice_step(0.3), 1.0);
        assert_eq!(nice_step(4.5), 5.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(time_step_us(120_000_000), 15_000_000);
        assert_eq!(time_step_us(3_600_000_000), 600_000_000);
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn a_report_lands_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("mynet-html-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("report.html");
        check_writable(&path).expect("writable");
        write_atomically(&path, "<p>one</p>").expect("first write");
        write_atomically(&path, "<p>two</p>").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "<p>two</p>");
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1, "no temporary file left behind");
        assert!(check_writable(&dir).is_err(), "a directory is not a report file");
        assert!(check_writable(&dir.join("missing/report.html")).is_err());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
