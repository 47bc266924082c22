//! The data plane against a real S3-compatible server: `s3s-fs`, which keeps each bucket as a
//! directory. Without the binary the tests say SKIPPED and pass; CI installs it
//! (`cargo install --locked s3s-fs@0.14.1 --features binary`).

mod common;

use common::{blobs_in, copies, grant, plan, readings};
use mcloud_store::data::{free, read_file, repair, write_file};
use mcloud_store::source::{SourceConfig, Sources};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "mcloud-test";
const SECRET_KEY: &str = "mcloud-test-secret";
const BUCKET: &str = "blobs";

fn s3s_fs() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// A running s3s-fs, stopped when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, root: &Path) -> Server {
    // A port the system just handed out and took back: free unless something races for it.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs starts");
    let mut server = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("s3s-fs exited: {status}");
        }
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn s3_source(id: u8, server: &Server) -> SourceConfig {
    SourceConfig::s3(id, &server.endpoint, BUCKET, ACCESS_KEY, SECRET_KEY)
}

/// A temporary directory and s3s-fs serving its `s3` folder (with the bucket made), or None
/// (and a note that the test skipped) when s3s-fs is not installed.
fn s3_in_temp_dir() -> Option<(tempfile::TempDir, PathBuf, Server)> {
    let Some(binary) = s3s_fs() else {
        eprintln!(
            "SKIPPED s3: s3s-fs not found (cargo install --locked s3s-fs@0.14.1 --features binary)"
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    // s3s-fs keeps a bucket as a directory of its root: making it makes the bucket.
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let server = start(&binary, &root);
    Some((dir, root, server))
}

#[tokio::test]
async fn a_file_spans_a_local_and_an_s3_source() {
    let Some((dir, root, server)) = s3_in_temp_dir() else {
        return;
    };
    let configs = vec![
        SourceConfig::local(1, dir.path().join("local")),
        s3_source(2, &server),
    ];
    let sources = Sources::open(&configs).unwrap();

    let data = readings(25 * 4096 + 99);
    let plan = plan(0x5353, data.len(), 4096, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    assert_eq!(records.len(), 26 * 2);
    assert!(copies(&records).values().all(|s| s.len() == 2));
    let g = grant(&plan, records);
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);

    // The blobs are files of the bucket's directory, under their random names only.
    let stored = blobs_in(&root.join(BUCKET));
    let listed = sources.list(2).await.unwrap();
    assert_eq!(listed.len(), 26);
    let names: Vec<&String> = stored
        .iter()
        .map(|(n, _)| n)
        .filter(|n| listed.contains(n))
        .collect();
    assert_eq!(
        names.len(),
        26,
        "{:?}",
        stored.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    for r in g.records.iter().filter(|r| r.source == 2) {
        let name = r.place(g.file).blob_name(&plan.key, 2);
        let (_, bytes) = stored
            .iter()
            .find(|(n, _)| *n == name)
            .expect("the blob is in the bucket");
        assert!(!bytes
            .windows(8)
            .any(|w| data.windows(8).take(200).any(|d| d == w)));
    }

    // The local copies gone: everything reads from S3.
    std::fs::remove_dir_all(dir.path().join("local")).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    // And repair puts them back from there.
    let repaired = repair(&sources, &g, 2).await.unwrap();
    assert_eq!(repaired, g.records);
    assert_eq!(blobs_in(&dir.path().join("local")).len(), 26);

    // A blob missing on S3 is reported as missing, and freeing works there too.
    let blobs: Vec<(u8, String)> = g
        .records
        .iter()
        .map(|r| (r.source, r.place(g.file).blob_name(&plan.key, r.source)))
        .collect();
    let on_s3 = blobs.iter().find(|b| b.0 == 2).unwrap();
    assert_eq!(
        free(&sources, std::slice::from_ref(on_s3)).await.unwrap(),
        1
    );
    assert_eq!(
        sources.get(2, &on_s3.1).await.unwrap_err().code(),
        "blob_missing"
    );
    assert_eq!(free(&sources, &blobs).await.unwrap(), blobs.len());
    assert!(sources.list(2).await.unwrap().is_empty());
    assert!(sources.list(1).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stopped_s3_server_is_read_around_and_refused_clearly() {
    let Some((dir, root, server)) = s3_in_temp_dir() else {
        return;
    };
    let mut prefixed = s3_source(2, &server);
    prefixed.prefix = Some("mcloud/packets".into());
    let configs = vec![SourceConfig::local(1, dir.path().join("local")), prefixed];
    let sources = Sources::open(&configs).unwrap();
    let data = readings(10 * 1024);
    let plan = plan(0x5354, data.len(), 1024, 2);
    let g = grant(&plan, write_file(&sources, &plan, &data).await.unwrap());
    assert_eq!(
        blobs_in(&root.join(BUCKET).join("mcloud/packets")).len(),
        10
    );

    drop(server);
    // Reads go to the local copies.
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    // With the local copy of one packet gone too, that packet cannot be had: the error says
    // a source is unavailable (it may come back with the copy), not that the data is lost.
    let r = g.records.iter().find(|r| r.source == 1).unwrap();
    std::fs::remove_file(
        dir.path()
            .join("local")
            .join(r.place(g.file).blob_name(&plan.key, 1)),
    )
    .unwrap();
    let err = read_file(&sources, &g).await.unwrap_err();
    assert_eq!(err.code(), "source_unavailable", "{err}");
    // Listing the stopped source fails clearly.
    assert_eq!(
        sources.list(2).await.unwrap_err().code(),
        "source_unavailable"
    );
}
