//! `mynet sim --report FILE`: the page is written and the printed run is unchanged; a path that
//! cannot be written is refused before the run starts.

mod common;

use std::time::{Duration, Instant};

use common::{last_json, mynet};

#[test]
fn the_report_is_written_and_the_run_is_the_same() {
    let root = tempfile::tempdir().expect("tempdir");
    let args = ["sim", "--seed", "4", "--nodes", "8", "--duration", "40s", "--faults", "crash", "--content", "2"];
    let plain = mynet(root.path(), &args);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let page_path = root.path().join("run.html");
    let target = page_path.to_str().expect("utf-8 temp path");
    let mut with_report = args.to_vec();
    with_report.extend(["--report", target]);
    let reported = mynet(root.path(), &with_report);
    assert!(reported.status.success(), "{}", String::from_utf8_lossy(&reported.stderr));

    let (a, b) = (last_json(&plain), last_json(&reported));
    assert_eq!(a["trace_hash"], b["trace_hash"], "--report changed the run");
    assert_eq!(a["events"], b["events"]);
    // stderr is a pipe here: no progress line, only the note about the page.
    assert_eq!(String::from_utf8_lossy(&plain.stderr), "");
    assert_eq!(String::from_utf8_lossy(&reported.stderr), format!("wrote the report to {target}\n"));

    let page = std::fs::read_to_string(&page_path).expect("the page was written");
    assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
    let hash = b["trace_hash"].as_str().expect("trace hash");
    assert!(page.contains(hash), "the page carries the run's summary");
    assert!(page.contains(">Nodes up</h2>") && page.contains("<svg"));
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    let left: Vec<_> = std::fs::read_dir(root.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("run.html") && name != "run.html")
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn an_unwritable_report_path_is_refused_before_the_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("no-such-dir").join("run.html");
    let target = missing.to_str().expect("utf-8 temp path");
    let started = Instant::now();
    // An hour of 300 nodes would take minutes: the refusal must come first.
    let out = mynet(root.path(), &["sim", "--nodes", "300", "--duration", "1h", "--report", target]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "the run started before the path was checked");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--report") && stderr.contains("cannot write there"), "{stderr}");
    assert!(out.stdout.is_empty(), "no summary: nothing ran");
    let dir = root.path().to_str().expect("utf-8 temp path");
    let out = mynet(root.path(), &["sim", "--nodes", "300", "--duration", "1h", "--report", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is a directory"), "{stderr}");
}
