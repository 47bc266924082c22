//! The link between a node and a worker process admits only the worker the node started:
//! other local connections to the worker listener (plain TCP, silent or not, and TLS clients
//! without the worker's certificate) are refused and receive nothing, and the real worker
//! still starts and aggregates exactly.

use mcloud_cloud::elastic::remote::OsProcess;
use mcloud_cloud::elastic::worker::{Msg, WorkerId};
use mcloud_cloud::elastic::{Provisioner, WorkerHandle};
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::share::record_values;
use mcloud_core::wire::{ShareRecord, UploadBatch};
use mcloud_core::{BatchId, Partial};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const BUCKETS: usize = 16;
const WINDOW: u64 = 60;
const ID: u32 = 7;

/// Accepts any server certificate, as a local process fishing for shares would.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client to the worker listener, with a self-signed client certificate or none.
fn stray_tls_config(with_certificate: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = if with_certificate {
        let own = rcgen::generate_simple_self_signed(vec!["worker".to_string()]).expect("cert");
        builder
            .with_client_auth_cert(
                vec![own.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(own.key_pair.serialize_der())),
            )
            .expect("client certificate")
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Everything a stray connection receives until the node closes it: raw bytes for plain TCP,
/// plaintext for TLS (with how the TLS session ended).
fn receive_plain(mut sock: TcpStream, send: &'static [u8]) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let _ = sock.write_all(send);
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        got
    })
}

fn receive_tls(
    sock: TcpStream,
    config: Arc<ClientConfig>,
) -> JoinHandle<(Vec<u8>, std::io::Result<usize>)> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let conn = ClientConnection::new(config, name).expect("client");
        let mut tls = StreamOwned::new(conn, sock);
        let mut got = Vec::new();
        let end = tls.read_to_end(&mut got);
        (got, end)
    })
}

fn batch(id: u128, key: &mut u64) -> UploadBatch {
    let records = (0..400u64)
        .map(|i| {
            *key += 1;
            ShareRecord {
                key: *key,
                ts: 1000 + (*key * 7) % 20,
                metric: if i % 2 == 0 {
                    Metric::Load
                } else {
                    Metric::Work
                },
                group: GroupKey {
                    house: (*key % 5) as u32,
                    household: (*key % 3) as u32,
                    plug: (*key % 7) as u32,
                },
                share: record_values(*key * 1_000_003 % 997),
            }
        })
        .collect();
    UploadBatch::single_party(BatchId(id), records)
}

fn wait<T>(mut rx: oneshot::Receiver<T>, what: &str) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.try_recv() {
            Ok(v) => return v,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn only_the_started_worker_is_served_on_its_link() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // All connected before the worker process exists, so the node meets each of them first.
    let connect = || TcpStream::connect(addr).expect("connect");
    let silent = receive_plain(connect(), b"");
    let garbage = receive_plain(connect(), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let anonymous = receive_tls(connect(), stray_tls_config(false));
    let self_signed = receive_tls(connect(), stray_tls_config(true));

    let provisioner = OsProcess {
        program: env!("CARGO_BIN_EXE_mcloud").into(),
        record_cost: Duration::ZERO,
    };
    assert_eq!(provisioner.name(), "os-process");
    let worker = provisioner
        .start_on(listener, ID, BUCKETS, WINDOW)
        .expect("the worker starts despite the strays");

    // Many requests queued without waiting for any answer, then the sums.
    let owners = Arc::new(vec![ID; BUCKETS]);
    let mut key = 0;
    let mut expected: HashMap<(Metric, GroupKey), Partial> = HashMap::new();
    let mut total = 0;
    for id in 0..50u128 {
        let batch = batch(id, &mut key);
        // Every third batch aborts: its shares must not count.
        let committed = id % 3 != 0;
        if committed {
            for r in &batch.records {
                expected
                    .entry((r.metric, r.group))
                    .or_default()
                    .add_shares(&r.share);
            }
        }
        total += batch.records.len() as u64;
        feed(&worker, batch, &owners, committed);
    }
    let (reply, rx) = oneshot::channel();
    let start = 1000 - 1000 % WINDOW;
    worker
        .tx
        .send(Msg::Take {
            windows: Arc::new(vec![start]),
            reply,
        })
        .expect("queue");
    let mut taken = wait(rx, "take");
    let window = taken.remove(&start).expect("the window's sums");
    assert_eq!(window.groups, expected);
    assert_eq!(
        worker
            .shared
            .records
            .load(std::sync::atomic::Ordering::Relaxed),
        total
    );

    // Large requests and large answers both ways at once, nothing read until all are
    // queued: neither direction may wait for the other.
    let mut takes = Vec::new();
    for id in 50..250u128 {
        feed(&worker, batch(id, &mut key), &owners, false);
        let (reply, rx) = oneshot::channel();
        worker
            .tx
            .send(Msg::Take {
                windows: Arc::new(vec![start]),
                reply,
            })
            .expect("queue");
        takes.push(rx);
    }
    for rx in takes {
        let mut taken = wait(rx, "take");
        assert_eq!(taken.remove(&start).expect("sums").groups, expected);
    }

    let (reply, rx) = oneshot::channel();
    worker.tx.send(Msg::Stop { reply }).expect("queue");
    let left = wait(rx, "stop");
    assert!(!left.is_empty(), "the worker hands its buckets back");

    // The strays were dropped without a byte of the link's data: the silent one after the
    // handshake timeout, the others at their first message. A refused TLS client at most
    // reads an alert, which ends its session with an error.
    let got = silent.join().expect("silent stray");
    assert!(got.is_empty(), "silent stray received {} bytes", got.len());
    let got = garbage.join().expect("garbage stray");
    assert!(
        got.len() <= 7 && got.first().is_none_or(|&b| b == 0x15),
        "plain TCP stray received {got:?}"
    );
    for (what, stray) in [("anonymous", anonymous), ("self-signed", self_signed)] {
        let (got, end) = stray.join().expect("TLS stray");
        assert!(
            got.is_empty(),
            "{what} TLS stray received {} bytes",
            got.len()
        );
        let refused = end.expect_err("the node refuses the TLS stray");
        assert!(
            refused.kind() == std::io::ErrorKind::InvalidData,
            "{what} TLS stray: {refused}"
        );
    }
}

/// Queues all of `batch` at `worker`, then its final flag.
fn feed(worker: &WorkerHandle, batch: UploadBatch, owners: &Arc<Vec<WorkerId>>, committed: bool) {
    let id = batch.batch_id;
    worker
        .tx
        .send(Msg::Process {
            batch: Arc::new(batch),
            owners: owners.clone(),
        })
        .expect("queue");
    worker
        .tx
        .send(Msg::Decide { id, committed })
        .expect("queue");
}
