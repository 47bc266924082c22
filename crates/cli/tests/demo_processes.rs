//! `mcloud demo --processes --chaos` end to end: every role its own process, the catalog
//! leader and a cloud SIGKILLed mid-run and restarted, and the collector process's result
//! still equal to the plaintext reference.

mod common;
use common::BIN;
use std::process::Command;

#[test]
fn chaos_demo_verifies_and_reports_what_it_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--processes", "--chaos"])
        .args(["--houses", "2", "--households", "1", "--plugs", "3"])
        .args(["--hours", "0.5", "--batch-size", "60", "--in-flight", "2"])
        // 1800 s of readings in 15 s: the kills land at about 4 s and 8 s.
        .args(["--speedup", "120"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    for expected in [
        "SIGKILL catalog voter",
        "(leader of partition 0)",
        "the catalog had no leader for",
        "SIGKILL cloud",
        "restarted cloud",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Every role ran as its own process and left its log.
    for role in [
        "catalog0",
        "catalog1",
        "catalog2",
        "cloud0",
        "cloud1",
        "cloud2",
        "sensor",
        "collector",
    ] {
        assert!(
            dir.path().join(format!("logs/{role}.log")).exists(),
            "{role}"
        );
    }
}

/// Robust mode across real processes: every cloud reads its `[cloud.robust]` section, the
/// clouds verify among themselves over the network, and the sensor process sends robust
/// reports because `deployment.toml` says so.
#[test]
fn robust_demo_across_processes_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--processes", "--robust"])
        .args(["--houses", "2", "--households", "1", "--plugs", "3"])
        .args(["--hours", "0.25"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("check: OK"), "{stderr}");
    let cloud = std::fs::read_to_string(dir.path().join("cloud0.toml")).unwrap();
    assert!(cloud.contains("[cloud.robust]"), "{cloud}");
    let deployment = std::fs::read_to_string(dir.path().join("deployment.toml")).unwrap();
    assert!(deployment.contains("robust = true"), "{deployment}");
    // A robust cloud refuses plain uploads, so the check passing means every batch went as
    // verified reports.
}

#[test]
fn chaos_needs_processes() {
    let out = Command::new(BIN)
        .args(["demo", "--chaos"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--processes"));
}
