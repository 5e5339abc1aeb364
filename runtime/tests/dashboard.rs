//! The dashboard in a real headless browser (Debian's chromium): the page the node serves
//! loads, runs its script against the API, and shows the figures the API gives; a screenshot
//! is saved as a test artifact (`target/tmp/dashboard.png`).
//!
//! Without chromium the test is skipped with the reason, unless `MYNET_REQUIRE_BROWSER` is
//! set (CI installs chromium and sets it, so there it cannot be skipped).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless chromium on `url` with `extra` arguments; its stdout.
fn headless(browser: &PathBuf, profile: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The text of the element with `id` in the dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\">");
    let start = dom.find(&open).unwrap_or_else(|| panic!("no element {id} in the page")) + open.len();
    let end = dom[start..].find('<').expect("element closes") + start;
    &dom[start..end]
}

#[test]
fn the_dashboard_shows_what_the_api_says_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("MYNET_REQUIRE_BROWSER").is_none(),
            "MYNET_REQUIRE_BROWSER is set but chromium is not installed (apt-get install -y chromium)"
        );
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let a = first_node(root.path(), Duration::from_secs(30));
    let mut b = RunningNode::start(&joiner(root.path(), "b", &a, json!({})));
    b.wait_status(Duration::from_secs(30), |s| s["peer_count"] == 1);
    let file = root.path().join("item.bin");
    std::fs::write(&file, vec![7u8; 300_000]).expect("item");
    let out = mynet(&b.dir, &["add", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two samples (5 s apart) so the charts have a line.
    let b_dir = b.dir.clone();
    b.wait_status(Duration::from_secs(20), |_| {
        last_json(&mynet(&b_dir, &["metrics", "--history", "--json"]))["samples"]
            .as_array()
            .is_some_and(|s| s.len() >= 2)
    });

    let url = last_json(&mynet(&b.dir, &["dashboard", "--json"]))["url"].as_str().expect("url").to_string();
    let profile = root.path().join("chromium-profile");
    let dom = headless(&browser, &profile, &url, &["--dump-dom"]);
    let status = b.try_status().expect("status");
    assert!(dom.contains("data-ready=\"1\""), "the page's script did not finish a refresh:\n{dom}");
    assert_eq!(element_text(&dom, "error"), "", "the page reported an error");
    assert_eq!(element_text(&dom, "node_id"), status["node_id"].as_str().expect("id"));
    assert_eq!(element_text(&dom, "network_id"), "mynet-test");
    assert_eq!(element_text(&dom, "phase"), "ready");
    assert_eq!(element_text(&dom, "peer_count"), "1");
    assert_eq!(element_text(&dom, "items"), "1");
    assert_eq!(element_text(&dom, "sync_complete"), "1");
    assert_eq!(element_text(&dom, "bytes_stored"), "293.0 KiB");
    let peer = status["peers"][0]["node_id"].as_str().expect("peer");
    assert!(dom.contains(&peer[..16]), "the peers table names the peer");
    for check in ["startup", "peers", "event_log", "storage", "disk"] {
        assert!(dom.contains(&format!("<td>{check}</td>")), "health check {check} shown");
    }
    assert!(dom.matches("data-points=\"").count() == 2, "two charts drawn");
    assert!(!dom.contains("data-points=\"0\"") && !dom.contains("data-points=\"1\""), "charts have lines");

    // Without the token the page says how to get one, and shows no data.
    let bare = url.split('#').next().expect("url").to_string();
    let dom = headless(&browser, &profile, &bare, &["--dump-dom"]);
    assert!(element_text(&dom, "error").contains("mynet dashboard"), "{dom}");
    assert_eq!(element_text(&dom, "peer_count"), "–");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    headless(&browser, &profile, &url, &["--window-size=1280,900", &arg]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
}
