//! Disk faults under one role of the in-process deployment: one cloud's or one catalog voter's
//! data directory sits on a small filesystem the test mounts before the cluster starts, which
//! then fills up or turns read-only mid-run.
//!
//! A full disk is a 16 MiB tmpfs and a filler file. A read-only disk is a 32 MiB ext4 image on a
//! loop device mounted with `errors=remount-ro`, turned read-only by the kernel itself
//! (`/sys/fs/ext4/<dev>/trigger_fs_error`): `mount -o remount,ro` is refused (EBUSY) while a
//! file on the filesystem is open for writing, which a running node's redb files always are.
//! Such a filesystem goes read-write again only once unmounted, so the node using it is stopped,
//! the filesystem checked and mounted again, and the node restarted.
//!
//! Needs root (mount, loop devices); each test says clearly that it skipped, and why, where that
//! is not permitted.

mod common;

use mcloud::cluster::{ClusterOptions, LocalCluster, GATEWAY};
use mcloud_catalog::FlagTable;
use mcloud_client::{Fate, Outcome, PlainBatch, Uploader};
use mcloud_collector::combine::Revealed;
use mcloud_collector::{check, Query, Reference};
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::wire::{CreateFlag, FlagState};
use mcloud_core::{BatchId, Reading};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const WINDOW: u64 = 60;
/// The cloud whose disk fails.
const FAULTY_CLOUD: u16 = 1;
/// Flags of batches a cloud refused end ERROR this long after CREATE.
const TTL: Duration = Duration::from_secs(2);
const NO_SPACE: &str = "No space left on device";
const READ_ONLY: &str = "Read-only file system";

// ---------------------------------------------------------------------------------------------
// Disks

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{cmd} {}`: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The disk fills up; a filler file is deleted to give the space back.
    Full,
    /// The kernel turns the filesystem read-only; it is checked and mounted again.
    ReadOnly,
}

impl Fault {
    /// What the node must say when the disk refuses a write.
    fn problem(self) -> &'static str {
        match self {
            Fault::Full => NO_SPACE,
            Fault::ReadOnly => READ_ONLY,
        }
    }
}

/// A small filesystem mounted at a role's data directory; unmounted lazily (so a file still
/// open cannot keep it) when the test ends, whatever happens.
struct Disk {
    path: PathBuf,
    /// The ext4 image behind a loop mount, for a disk that turns read-only.
    image: Option<PathBuf>,
}

impl Disk {
    /// Mounts the disk `fault` needs at `path`, or says why it cannot.
    fn mount(fault: Fault, path: &Path) -> Result<Disk, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let at = path.to_string_lossy();
        match fault {
            Fault::Full => {
                run("mount", &["-t", "tmpfs", "-o", "size=16m", "tmpfs", &at])?;
                Ok(Disk {
                    path: path.to_path_buf(),
                    image: None,
                })
            }
            Fault::ReadOnly => {
                let image = path.with_extension("ext4");
                std::fs::File::create(&image)
                    .and_then(|f| f.set_len(32 << 20))
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                let img = image.to_string_lossy();
                let made = run("mkfs.ext4", &["-q", "-F", "-O", "^has_journal", &img]);
                if let Err(e) = made {
                    let _ = std::fs::remove_file(&image);
                    return Err(e);
                }
                let disk = Disk {
                    path: path.to_path_buf(),
                    image: Some(image),
                };
                disk.mount_image("rw")?;
                let trigger = disk.trigger()?;
                if !trigger.exists() {
                    return Err(format!(
                        "{} is missing: this kernel cannot turn ext4 read-only on demand",
                        trigger.display()
                    ));
                }
                Ok(disk)
            }
        }
    }

    fn mount_image(&self, mode: &str) -> Result<(), String> {
        let image = self.image.as_ref().ok_or("not an image")?;
        let options = format!("loop,{mode},errors=remount-ro");
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                &options,
                &image.to_string_lossy(),
                &self.path.to_string_lossy(),
            ],
        )
        .map(|_| ())
    }

    /// The ext4 error trigger of the mounted image's loop device.
    fn trigger(&self) -> Result<PathBuf, String> {
        let source = run(
            "findmnt",
            &[
                "-n",
                "-o",
                "SOURCE",
                "--mountpoint",
                &self.path.to_string_lossy(),
            ],
        )?;
        let device = Path::new(&source)
            .file_name()
            .ok_or_else(|| format!("no device behind {}", self.path.display()))?;
        Ok(Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error"))
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the disk: writes a filler file until the disk refuses more for lack of space.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            if let Err(e) = file.write_all(&chunk).and_then(|_| file.sync_data()) {
                assert_eq!(e.raw_os_error(), Some(28), "filling the disk: {e}");
                return;
            }
        }
    }

    /// Gives the space back.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    /// The kernel turns the filesystem read-only, as it does after an error on the device.
    fn turn_read_only(&self) {
        std::fs::write(self.trigger().unwrap(), "1").unwrap();
        let e = std::fs::write(self.path.join("probe"), "x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(30),
            "the disk did not turn read-only: {e}"
        );
    }

    /// What an operator does with a filesystem the kernel turned read-only, once its users
    /// have closed their files: unmount, check, mount again.
    async fn check_and_mount(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match run("umount", &[&self.path.to_string_lossy()]) {
                Ok(_) => break,
                Err(e) if Instant::now() < until => {
                    tracing::debug!("unmounting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the stopped role still holds its disk: {e}"),
            }
        }
        let image = self.image.as_ref().unwrap().to_string_lossy().to_string();
        // 1: errors corrected, which is what the error the kernel recorded asks for.
        let fsck = Command::new("e2fsck").args(["-f", "-y", &image]).output();
        if let Ok(out) = fsck {
            assert!(
                out.status.code().is_some_and(|c| c <= 1),
                "e2fsck: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        self.mount_image("rw").unwrap();
    }

    fn remount(&self, mode: &str) {
        let options = format!("remount,{mode}");
        run("mount", &["-o", &options, &self.path.to_string_lossy()]).unwrap();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.path.to_string_lossy()]);
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Mounts the disk for `fault` at `path`, or prints clearly why `test` is skipped.
fn disk_or_skip(test: &str, fault: Fault, path: &Path) -> Option<Disk> {
    match Disk::mount(fault, path) {
        Ok(disk) => Some(disk),
        Err(why) => {
            let needs = match fault {
                Fault::Full => "root and tmpfs",
                Fault::ReadOnly => "root, mkfs.ext4, loop devices and ext4's trigger_fs_error",
            };
            eprintln!(
                "SKIPPED {test}: cannot mount a test disk at {} (needs {needs}): {why}",
                path.display()
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logs and panics of the roles, which run in this process

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Keeps every log line (and echoes it to stderr when `RUST_LOG` is set).
struct Tee {
    buffer: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.lock().unwrap().extend_from_slice(bytes);
        if self.echo {
            std::io::stderr().write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One test at a time: each starts a whole deployment and makes it fail on purpose, and
/// `cargo test` runs a file's tests in parallel, so together they would starve each other's
/// elections on a small machine; a panic is also counted for the test that caused it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test: the turn in [`SERIAL`] and the panics counted before it began.
struct Watch {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    panics_before: usize,
}

impl Watch {
    fn assert_no_panics(&self) {
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            self.panics_before,
            "a role panicked"
        );
    }
}

/// Waits for this test's turn, then starts keeping the roles' logs and counting panics (once
/// per process).
async fn watch() -> Watch {
    let turn = SERIAL.lock().await;
    init_watch();
    Watch {
        _turn: turn,
        panics_before: PANICS.load(Ordering::SeqCst),
    }
}

fn init_watch() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let echo = std::env::var_os("RUST_LOG").is_some();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,mcloud_catalog=info,mcloud_cloud=info,openraft=error")
            .with_ansi(false)
            .with_writer(move || Tee {
                buffer: sink.clone(),
                echo,
            })
            .try_init();
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            report(info)
        }));
        buffer
    });
}

/// Log lines that mention `needle` (each test's paths are its own).
fn log_lines(needle: &str) -> Vec<String> {
    let Some(buffer) = LOGS.get() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buffer.lock().unwrap()).to_string();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A cloud's disk

fn readings(minutes: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 2,
        plugs_per_household: 3,
        duration_secs: minutes * 60,
        interval_secs: 2,
        ..Default::default()
    })
    .collect()
}

/// What the sensor learnt of its batches: the committed ones (flag TRUE) and the others.
#[derive(Default)]
struct Ledger {
    committed: Vec<Vec<Reading>>,
    failed: Vec<BatchId>,
}

impl Ledger {
    /// The plaintext reference of the committed readings before `to`.
    fn reference(&self, to: u64) -> Reference {
        let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
        self.committed
            .iter()
            .flatten()
            .filter(|r| r.ts < to)
            .for_each(|r| reference.add(r));
        reference
    }

    /// Committed batches touching each window that ends by `to`.
    fn batches_per_window(&self, to: u64) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for batch in &self.committed {
            let mut starts: Vec<u64> = batch.iter().map(|r| r.ts - r.ts % WINDOW).collect();
            starts.sort_unstable();
            starts.dedup();
            for s in starts.into_iter().filter(|s| s + WINDOW <= to) {
                *out.entry(s).or_default() += 1;
            }
        }
        out
    }
}

/// Runs the transactions of `batches`, four at a time, and returns each outcome in order.
async fn transact_all(
    uploader: &Arc<Uploader>,
    batches: &[Vec<Reading>],
) -> Vec<(PlainBatch, Outcome)> {
    let mut out = Vec::new();
    for group in batches.chunks(4) {
        let tasks: Vec<_> = group
            .iter()
            .map(|b| {
                let batch = PlainBatch::new(GATEWAY.sensor, b.clone());
                let uploader = uploader.clone();
                tokio::spawn(async move {
                    let outcome = uploader.transact(&batch, Fate::Complete).await;
                    (batch, outcome.expect("a transaction never fails locally"))
                })
            })
            .collect();
        for task in tasks {
            out.push(task.await.unwrap());
        }
    }
    out
}

/// Uploads `batches`, every one of which must commit.
async fn commit_all(uploader: &Arc<Uploader>, batches: &[Vec<Reading>], ledger: &mut Ledger) {
    for (batch, outcome) in transact_all(uploader, batches).await {
        assert_eq!(outcome, Outcome::Committed, "batch {}", batch.id);
        ledger.committed.push(batch.readings);
    }
}

fn query(to: u64, level: GroupLevel) -> Query {
    Query {
        from: 0,
        to,
        level,
        min_count: 1,
    }
}

/// Reveals every window in [0, to) as the owner and checks it against the committed batches:
/// group by group to the last unit, and the number of batches each window aggregated.
async fn check_revealed(cluster: &LocalCluster, ledger: &Ledger, to: u64) -> Revealed {
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(&query(to, GroupLevel::Plug), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(revealed.not_ready.is_empty(), "{:?}", revealed.not_ready);
    let reference = ledger.reference(to);
    let report = check(&revealed, &reference, 1);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.matched, reference.groups().count() as u64);
    // Windows that only refused batches touched are revealed empty.
    let per_window: BTreeMap<u64, u64> = revealed
        .windows
        .iter()
        .filter(|w| w.batches > 0 || !w.groups.is_empty())
        .map(|w| (w.window.start, w.batches))
        .collect();
    assert_eq!(
        per_window,
        ledger.batches_per_window(to),
        "batches aggregated per window"
    );
    revealed
}

/// Waits until the catalog decided every refused batch's flag ERROR.
async fn refused_flags_end_error(cluster: &LocalCluster, ledger: &Ledger) {
    let catalog = cluster.catalog_client().unwrap();
    common::wait_for(30, "the refused batches' flags ending ERROR", async || {
        let flags = catalog.get(ledger.failed.clone()).await.ok()?;
        flags
            .iter()
            .all(|f| f.is_some_and(|f| f.state == FlagState::Error))
            .then_some(())
    })
    .await;
}

/// Three clouds, cloud `FAULTY_CLOUD` on its own disk; the gateway sensor uploads a third of
/// its batches, the disk fails, eight batches meet the failed disk, the disk comes back, the
/// rest is uploaded; the revealed aggregates must equal the plaintext reference of exactly the
/// committed batches, before and after a restart of that cloud.
async fn cloud_disk_fault(test: &str, fault: Fault) {
    let watch = watch().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = disk_or_skip(
        test,
        fault,
        &dir.path().join(format!("cloud{FAULTY_CLOUD}")),
    ) else {
        return;
    };
    let mut cluster = common::cluster(dir.path(), 3, ClusterOptions::default()).await;
    let all = readings(60);
    let batches = |r: &[Reading], size| -> Vec<Vec<Reading>> {
        r.chunks(size).map(<[Reading]>::to_vec).collect()
    };
    // The batches that meet the failed disk are large: the shares of the first ones, folded
    // into their sealed windows before the fault, leave free pages in the values table that a
    // small batch would fit in without needing the disk.
    let (head, tail) = all.split_at(all.len() / 6);
    let (mid, rest) = tail.split_at(24_000);
    let (first, during, after) = (batches(head, 300), batches(mid, 3000), batches(rest, 300));
    let (first, during, after) = (&first[..], &during[..], &after[..]);
    let uploader = Arc::new(cluster.uploader(TTL).unwrap());
    let mut ledger = Ledger::default();

    commit_all(&uploader, first, &mut ledger).await;
    // Closes the first windows: every cloud seals and stores them.
    let next_ts = during[0][0].ts;
    uploader.advance_watermark(next_ts, false).await.unwrap();
    let closed = next_ts - next_ts % WINDOW - WINDOW;
    let before = check_revealed(&cluster, &ledger, closed).await;
    assert!(
        before.windows.len() >= 5,
        "{} windows",
        before.windows.len()
    );
    let other = cluster.collector_as(&cluster.app_token().unwrap()).unwrap();
    let house_level = query(u64::MAX, GroupLevel::House);
    other.collect(&house_level).await.unwrap();

    match fault {
        Fault::Full => disk.fill(),
        Fault::ReadOnly => disk.turn_read_only(),
    }
    // A batch the disk refuses is refused by name (503 `storage_unavailable`), never
    // acknowledged: the uploader retries until the flag's deadline, does not SET it, and the
    // flag ends ERROR (a sensor then sends the batch again under a new flag). A full disk may still take a small
    // commit that fits in pages redb already holds; such a batch is acknowledged, committed
    // and must count like any other.
    let mut stored = 0;
    for (batch, outcome) in transact_all(&uploader, during).await {
        match &outcome {
            Outcome::Committed if fault == Fault::Full => {
                stored += 1;
                ledger.committed.push(batch.readings);
            }
            Outcome::Rejected(reason) | Outcome::Expired(reason) => {
                assert!(
                    reason.contains("503") && reason.contains(fault.problem()),
                    "batch {}: {reason}",
                    batch.id
                );
                ledger.failed.push(batch.id);
            }
            _ => panic!("batch {} on a failed disk: {outcome:?}", batch.id),
        }
    }
    eprintln!(
        "{fault:?} disk: {} batches refused, {stored} stored",
        ledger.failed.len()
    );
    assert!(
        ledger.failed.len() >= during.len() / 2,
        "the disk refused {} of {} batches ({stored} stored)",
        ledger.failed.len(),
        during.len()
    );
    // The node still answers the owner's reads of what it had sealed, and its status.
    let node = cluster.cloud(FAULTY_CLOUD).expect("the cloud is still up");
    assert_eq!(node.status()["party"], FAULTY_CLOUD);
    drop(node);
    let during_fault = check_revealed(&cluster, &ledger, closed).await;
    assert_eq!(during_fault.windows.len(), before.windows.len());
    // Other users' reads must be in the audit log before they are answered: refused, by name.
    let e = other.collect(&house_level).await.unwrap_err().to_string();
    assert!(e.contains("503") && e.contains(fault.problem()), "{e}");

    match fault {
        Fault::Full => disk.free(),
        Fault::ReadOnly => {
            // Only a restart lets go of the files, after which the disk can be checked and
            // mounted again; read-only first, where the cloud refuses to start, by name.
            cluster.stop_cloud(FAULTY_CLOUD).await;
            disk.check_and_mount().await;
            disk.remount("ro");
            let e = cluster.restart_cloud(FAULTY_CLOUD).await.unwrap_err();
            assert!(format!("{e:#}").contains(READ_ONLY), "{e:#}");
            disk.remount("rw");
            cluster.restart_cloud(FAULTY_CLOUD).await.unwrap();
        }
    }
    commit_all(&uploader, after, &mut ledger).await;
    other.collect(&house_level).await.unwrap();
    refused_flags_end_error(&cluster, &ledger).await;
    let end = all.iter().map(|r| r.ts).max().unwrap();
    uploader.advance_watermark(end, true).await.unwrap();
    check_revealed(&cluster, &ledger, u64::MAX).await;

    // The values table opens again, whole, and answers the same.
    cluster.restart_cloud(FAULTY_CLOUD).await.unwrap();
    check_revealed(&cluster, &ledger, u64::MAX).await;
    cluster.shutdown().await;
    watch.assert_no_panics();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_whose_disk_fills_refuses_uploads_by_name_and_recovers() {
    cloud_disk_fault(
        "a_cloud_whose_disk_fills_refuses_uploads_by_name_and_recovers",
        Fault::Full,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_whose_disk_turns_read_only_refuses_uploads_by_name_and_recovers() {
    cloud_disk_fault(
        "a_cloud_whose_disk_turns_read_only_refuses_uploads_by_name_and_recovers",
        Fault::ReadOnly,
    )
    .await;
}

/// A window whose sealing the full disk refused must still be answered once the disk has room
/// again and the window has turned cold (left memory, two hours of event time later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_sealed_while_the_disk_was_full_is_still_answered_once_cold() {
    let test = "a_window_sealed_while_the_disk_was_full_is_still_answered_once_cold";
    let watch = watch().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = disk_or_skip(
        test,
        Fault::Full,
        &dir.path().join(format!("cloud{FAULTY_CLOUD}")),
    ) else {
        return;
    };
    let cluster = common::cluster(dir.path(), 3, ClusterOptions::default()).await;
    // Two plugs, one reading a minute each, for three and a half hours.
    let all: Vec<Reading> = Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 1,
        plugs_per_household: 1,
        duration_secs: 210 * 60,
        interval_secs: 60,
        ..Default::default()
    })
    .collect();
    let t0 = all[0].ts - all[0].ts % WINDOW;
    let uploader = Arc::new(cluster.uploader(TTL).unwrap());
    let mut ledger = Ledger::default();
    let first: Vec<Reading> = all.iter().filter(|r| r.ts < t0 + 300).copied().collect();
    commit_all(&uploader, &[first], &mut ledger).await;
    // A batch every cloud stores and whose sensor dies before SET: its window stays
    // undecided until the flag ends ERROR.
    let undecided: Vec<Reading> = all
        .iter()
        .filter(|r| (t0 + 300..t0 + 360).contains(&r.ts))
        .copied()
        .collect();
    let crashed = PlainBatch::new(GATEWAY.sensor, undecided);
    let outcome = uploader
        .transact(&crashed, Fate::DieAfter(3))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Crashed);
    ledger.failed.push(crashed.id);
    uploader.advance_watermark(t0 + 600, false).await.unwrap();

    // The flag ends ERROR while the disk is full: the cloud seals the window, and storing it
    // fails.
    disk.fill();
    refused_flags_end_error(&cluster, &ledger).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    disk.free();

    let rest: Vec<Vec<Reading>> = all
        .iter()
        .filter(|r| r.ts >= t0 + 600)
        .copied()
        .collect::<Vec<_>>()
        .chunks(120)
        .map(<[Reading]>::to_vec)
        .collect();
    commit_all(&uploader, &rest, &mut ledger).await;
    let end = all.iter().map(|r| r.ts).max().unwrap();
    uploader.advance_watermark(end, true).await.unwrap();
    check_revealed(&cluster, &ledger, u64::MAX).await;
    cluster.shutdown().await;
    drop(disk);
    watch.assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// A catalog voter's disk

/// `n` flags of the gateway sensor, open for ten minutes.
fn new_flags(n: usize) -> Vec<CreateFlag> {
    (0..n)
        .map(|_| CreateFlag {
            id: BatchId::of_sensor(GATEWAY.sensor),
            ttl_ms: 600_000,
            robust: false,
        })
        .collect()
}

/// CREATEs `n` flags and SETs every other one, through any voter, retrying while the catalog
/// elects a leader; returns the ids and whether each was SET.
async fn create_and_set(cluster: &LocalCluster, n: usize) -> Vec<(BatchId, bool)> {
    let catalog = cluster.catalog_client().unwrap();
    let flags = new_flags(n);
    let ids: Vec<BatchId> = flags.iter().map(|f| f.id).collect();
    common::wait_for(30, "the catalog taking a CREATE", async || {
        catalog.create(flags.clone()).await.ok()
    })
    .await;
    let set: Vec<BatchId> = ids.iter().copied().step_by(2).collect();
    let states = common::wait_for(30, "the catalog taking a SET", async || {
        catalog.set(set.clone()).await.ok()
    })
    .await;
    assert!(states.iter().all(|f| f.state == FlagState::True));
    ids.iter()
        .enumerate()
        .map(|(i, id)| (*id, i % 2 == 0))
        .collect()
}

/// Partition 0 of voter `voter` as its `/v1/status` shows it.
async fn voter_status(cluster: &LocalCluster, voter: u16) -> Option<serde_json::Value> {
    let url = format!(
        "{}{}",
        cluster.catalog_urls()[voter as usize],
        mcloud_core::paths::STATUS_PATH
    );
    let response = cluster.http().get(url).send().await.ok()?;
    let status: serde_json::Value = response.json().await.ok()?;
    Some(status["partitions"][0].clone())
}

/// The voter other than `voter` that leads partition 0 (a leader whose disk failed still
/// calls itself one until it hears of the next term).
fn leader_besides(cluster: &LocalCluster, voter: u16) -> Option<u16> {
    (0..cluster.catalog_voters())
        .filter(|v| *v != voter)
        .find(|v| {
            cluster.catalog_node(*v).is_some_and(|n| {
                n.raft(0).is_some_and(|r| {
                    r.metrics().borrow().state == mcloud_catalog::raft::ServerState::Leader
                })
            })
        })
}

/// Waits until voter `voter` has applied everything the leader has, and holds as many flags.
async fn caught_up(cluster: &LocalCluster, voter: u16, what: &str) {
    common::wait_for(30, what, async || {
        let leader = leader_besides(cluster, voter)?;
        let theirs = voter_status(cluster, leader).await?;
        let ours = voter_status(cluster, voter).await?;
        (ours["last_applied"].as_u64()? >= theirs["last_applied"].as_u64()?
            && ours["flags"] == theirs["flags"])
            .then_some(())
    })
    .await;
}

/// Reads every flag through voter `voter` alone and checks its state.
async fn flags_read_through(cluster: &LocalCluster, voter: u16, flags: &[(BatchId, bool)]) {
    let catalog = cluster.voter_catalog_client(voter).unwrap();
    let ids: Vec<BatchId> = flags.iter().map(|(id, _)| *id).collect();
    let got = common::wait_for(30, "a read through the recovered voter", async || {
        catalog.get(ids.clone()).await.ok()
    })
    .await;
    for ((id, set), flag) in flags.iter().zip(got) {
        let want = if *set {
            FlagState::True
        } else {
            FlagState::False
        };
        assert_eq!(flag.map(|f| f.state), Some(want), "flag {id}");
    }
}

/// Makes voter `voter` lead partition 0 (`lead`) or follow: a leader that should not lead is
/// restarted, and the others elect one of themselves meanwhile.
async fn place_leader(cluster: &mut LocalCluster, voter: u16, lead: bool) {
    for _ in 0..20 {
        cluster
            .wait_for_catalog_leaders(Duration::from_secs(30))
            .await
            .unwrap();
        let leader = cluster.catalog_leader(0).unwrap();
        if (leader == voter) == lead {
            return;
        }
        cluster.stop_catalog(leader).await;
        common::wait_for(30, "a leader among the others", async || {
            leader_besides(cluster, leader)
        })
        .await;
        cluster.restart_catalog(leader).await.unwrap();
    }
    panic!("voter {voter} did not become leader");
}

/// Three voters, voter `voter` on its own disk and leading or following; the disk fails, the
/// catalog goes on with the other two, the faulty voter says why once (no loop, no panic), the
/// disk comes back, the voter catches up, and a full restart of it opens its files.
async fn voter_disk_fault(test: &str, fault: Fault, lead: bool) {
    let watch = watch().await;
    let dir = tempfile::tempdir().unwrap();
    let voter: u16 = 2;
    let voter_dir = dir.path().join(format!("catalog{voter}"));
    let Some(disk) = disk_or_skip(test, fault, &voter_dir) else {
        return;
    };
    let mut cluster = common::cluster(dir.path(), 1, ClusterOptions::default()).await;
    place_leader(&mut cluster, voter, lead).await;
    let mut flags = create_and_set(&cluster, 500).await;
    common::wait_for(30, "every voter holding the first flags", async || {
        let mut seen = Vec::new();
        for v in 0..3 {
            let status = voter_status(&cluster, v).await?;
            seen.push((status["last_applied"].clone(), status["flags"].clone()));
        }
        seen.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;

    match fault {
        Fault::Full => disk.fill(),
        Fault::ReadOnly => disk.turn_read_only(),
    }
    let faulted = Instant::now();
    // The others, a majority, go on committing.
    for _ in 0..10 {
        flags.extend(create_and_set(&cluster, 50).await);
    }
    let needle = voter_dir.to_string_lossy().to_string();
    let reported = common::wait_for(10, "the faulty voter reporting its disk", async || {
        let lines = log_lines(&needle);
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains(fault.problem()))
            .then_some(lines)
    })
    .await;
    let ours = voter_status(&cluster, voter)
        .await
        .expect("the voter answers");
    let leader = leader_besides(&cluster, voter).expect("a leader among the others");
    let leader = voter_status(&cluster, leader).await.unwrap();
    assert!(
        ours["last_applied"].as_u64() < leader["last_applied"].as_u64(),
        "the faulty voter kept applying: {ours} / leader {leader}"
    );
    // Said once, then quiet while it waits for the disk: no loop of errors.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = log_lines(&needle);
    assert!(
        lines.len() <= 5,
        "{} lines in {:?}: {lines:#?}",
        lines.len(),
        faulted.elapsed()
    );
    assert!(!reported.is_empty());

    match fault {
        Fault::Full => {
            disk.free();
            // It catches up by itself, without a restart.
            caught_up(
                &cluster,
                voter,
                "the voter catching up once the disk has room",
            )
            .await;
        }
        Fault::ReadOnly => {
            cluster.stop_catalog(voter).await;
            disk.check_and_mount().await;
            cluster.restart_catalog(voter).await.unwrap();
            caught_up(
                &cluster,
                voter,
                "the voter catching up after the disk came back",
            )
            .await;
        }
    }
    flags.extend(create_and_set(&cluster, 50).await);
    caught_up(&cluster, voter, "the recovered voter following new entries").await;
    // A full restart opens its log and state machine.
    cluster.restart_catalog(voter).await.unwrap();
    caught_up(&cluster, voter, "the restarted voter catching up").await;
    flags_read_through(&cluster, voter, &flags).await;
    let counts = &cluster.catalog_node(voter).unwrap().status()[0].flags;
    assert_eq!(
        counts.open + counts.committed,
        flags.len() as u64,
        "{counts:?}"
    );
    cluster.shutdown().await;
    watch.assert_no_panics();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_voter_whose_disk_fills_catches_up_once_it_has_room() {
    voter_disk_fault(
        "a_follower_voter_whose_disk_fills_catches_up_once_it_has_room",
        Fault::Full,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_voter_whose_disk_fills_steps_aside_and_catches_up() {
    voter_disk_fault(
        "a_leader_voter_whose_disk_fills_steps_aside_and_catches_up",
        Fault::Full,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_disk_turns_read_only_catches_up_after_a_remount() {
    voter_disk_fault(
        "a_voter_whose_disk_turns_read_only_catches_up_after_a_remount",
        Fault::ReadOnly,
        false,
    )
    .await;
}

/// The state machine's snapshot file refuses writes while the Raft log still takes them
/// (`chattr +i` on `raft-state.redb`, which fails every write through the open handle with
/// `EPERM`): building a snapshot failed, and openraft stopped the voter's group for good.
/// Now the voter says why once, waits, and stores the snapshot once the file takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_snapshot_write_fails_stores_it_once_the_file_takes_writes() {
    const TEST: &str = "a_voter_whose_snapshot_write_fails_stores_it_once_the_file_takes_writes";
    let watch = watch().await;
    let dir = tempfile::tempdir().unwrap();
    let voter: u16 = 2;
    let mut cluster = common::cluster(
        dir.path(),
        1,
        ClusterOptions {
            catalog: mcloud::cluster::CatalogSpec {
                snapshot_every: 20,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    place_leader(&mut cluster, voter, false).await;
    let state_file = find_file(
        &dir.path().join(format!("catalog{voter}")),
        "raft-state.redb",
    )
    .expect("the voter's state machine file");
    let path = state_file.to_string_lossy().to_string();
    if let Err(e) = run("chattr", &["+i", &path]) {
        eprintln!("SKIPPED {TEST}: making a file immutable needs root on ext4 or xfs: {e}");
        cluster.shutdown().await;
        return;
    }
    let mut flags = Vec::new();
    for _ in 0..5 {
        flags.extend(create_and_set(&cluster, 50).await);
    }
    let reported = common::wait_for(60, "the voter reporting its snapshot write", async || {
        let lines = log_lines(&path);
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("Operation not permitted"))
            .then_some(lines)
    })
    .await;
    assert!(!reported.is_empty());
    run("chattr", &["-i", &path]).unwrap();
    flags.extend(create_and_set(&cluster, 50).await);
    caught_up(
        &cluster,
        voter,
        "the voter applying again once the file takes writes",
    )
    .await;
    common::wait_for(30, "the voter's snapshot stored", async || {
        voter_status(&cluster, voter).await?["snapshot"].as_u64()
    })
    .await;
    cluster.restart_catalog(voter).await.unwrap();
    caught_up(&cluster, voter, "the restarted voter catching up").await;
    flags_read_through(&cluster, voter, &flags).await;
    cluster.shutdown().await;
    watch.assert_no_panics();
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
