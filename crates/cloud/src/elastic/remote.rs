//! Workers as OS processes (`mcloud worker`), started and stopped by the node and talking to
//! it over a mutually authenticated TLS connection on loopback. For each worker the node makes
//! a [`PrivateLink`] (a CA for that one link, in memory only, with a server certificate for
//! the node and a client certificate for the worker) and passes the worker its half on stdin.
//! The node accepts, as its worker, only the connection that presents the link's client
//! certificate; any other connection to the listener is logged and dropped, and the node
//! keeps waiting. The node keeps a proxy per process: a writer thread turns the worker's queue
//! into frames, a reader thread turns the answers (one per request, in order) back into
//! replies and counters (see [`LinkReader`] for how the two share the TLS connection). A
//! process that dies closes the connection; the proxy marks the worker dead and the node
//! rebuilds its buckets.

use super::buckets::{BucketOf, BucketState};
use super::provisioner::{Provisioner, WorkerHandle};
use super::worker::{Msg, Worker, WorkerId, WorkerShared};
use crate::sums::WindowSums;
use crate::CloudError;
use mcloud_core::tls::{link_client_config, PrivateLink};
use mcloud_core::wire::UploadBatch;
use mcloud_core::BatchId;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection, StreamOwned};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Largest frame accepted, so a corrupt length cannot allocate without bound.
const MAX_FRAME: usize = 1 << 30;

/// How long a started worker process has to connect and complete the handshake.
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// How long one connection to the worker listener may take to complete the handshake: a
/// peer that stalls is dropped after it, and the node goes on waiting for its worker.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
enum Request {
    Process {
        batch: UploadBatch,
        owners: Vec<WorkerId>,
    },
    Decide {
        id: BatchId,
        committed: bool,
    },
    Release {
        bucket: usize,
    },
    Install {
        bucket: usize,
        state: BucketState,
    },
    Take {
        windows: Vec<u64>,
    },
    Forget {
        windows: Vec<u64>,
    },
    Checkpoint,
    Stop,
}

#[derive(Serialize, Deserialize)]
enum Body {
    Done,
    State(BucketState),
    Windows(HashMap<u64, WindowSums>),
    Left(Vec<(usize, BucketState)>),
    Snapshot(Vec<(usize, BucketState)>),
}

#[derive(Serialize, Deserialize)]
struct Reply {
    busy_ns: u64,
    records: u64,
    bucket_records: Vec<(usize, u64)>,
    body: Body,
}

/// Writes the length and the body with one call, so each frame goes out in as few TLS
/// records as its size allows.
fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> std::io::Result<()> {
    let mut frame = postcard::to_extend(value, vec![0u8; 4])
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    let len = u32::try_from(frame.len() - 4)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "frame too large"))?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&frame)?;
    w.flush()
}

fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    postcard::from_bytes(&buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// Starts workers as `program worker ...` processes.
pub struct OsProcess {
    pub program: PathBuf,
    pub record_cost: Duration,
}

/// Where each awaited answer goes.
enum Waiting {
    Nothing,
    State(oneshot::Sender<BucketState>),
    Done(oneshot::Sender<()>),
    Windows(oneshot::Sender<HashMap<u64, WindowSums>>),
    Left(oneshot::Sender<Vec<(usize, BucketState)>>),
    Snapshot(oneshot::Sender<Vec<(usize, BucketState)>>),
}

impl Provisioner for OsProcess {
    fn name(&self) -> &'static str {
        "os-process"
    }

    fn start(
        &self,
        id: WorkerId,
        buckets: usize,
        window_secs: u64,
    ) -> Result<WorkerHandle, CloudError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| CloudError::Workers(format!("worker process {id}: listening: {e}")))?;
        self.start_on(listener, id, buckets, window_secs)
    }
}

impl OsProcess {
    /// [`Provisioner::start`] on a listener the caller bound (on loopback): the worker process
    /// is told to connect to its address, and it is the only connection served there.
    pub fn start_on(
        &self,
        listener: TcpListener,
        id: WorkerId,
        buckets: usize,
        window_secs: u64,
    ) -> Result<WorkerHandle, CloudError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CloudError::Workers(format!("worker process {id}: {what}: {e}"))
        };
        let addr = listener.local_addr().map_err(|e| fail("listening", &e))?;
        let link = PrivateLink::generate(&addr.ip().to_string())
            .map_err(|e| fail("TLS credentials", &e))?;
        let config = link
            .server_config()
            .map_err(|e| fail("TLS credentials", &e))?;
        let mut child = Command::new(&self.program)
            .arg("worker")
            .arg("--connect")
            .arg(addr.to_string())
            .arg("--id")
            .arg(id.to_string())
            .arg("--buckets")
            .arg(buckets.to_string())
            .arg("--window")
            .arg(window_secs.to_string())
            .arg("--record-cost-us")
            .arg(self.record_cost.as_micros().to_string())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| fail(&format!("starting {}", self.program.display()), &e))?;
        let pid = child.id();
        // The worker's key goes through a pipe only the two processes hold, not argv, which
        // any local user can read (ps). Dropping the handle closes the pipe: the worker reads
        // to its end.
        let sent = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(link.client_pem().as_bytes()),
            None => Err(std::io::Error::other("no pipe to the process")),
        };
        let child = Arc::new(Mutex::new(child));
        let connected = sent
            .map_err(|e| fail("passing TLS credentials", &e))
            .and_then(|()| {
                accept_worker(id, &listener, &config, Instant::now() + CONNECT_DEADLINE)
                    .map_err(|e| fail("connecting", &e))
            });
        let (stream, tls) = match connected {
            Ok(link) => link,
            Err(e) => {
                kill(&child);
                return Err(e);
            }
        };
        let _ = stream.set_nodelay(true);
        let (input, output) = match stream.try_clone() {
            Ok(reader) => {
                let tls = Arc::new(Mutex::new(tls));
                (
                    LinkReader::new(reader, tls.clone()),
                    LinkWriter::new(stream, tls),
                )
            }
            Err(e) => {
                kill(&child);
                return Err(fail("connection", &e));
            }
        };
        let shared = Arc::new(WorkerShared::new(buckets));
        let waiting: Arc<Mutex<VecDeque<Waiting>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<Msg>();
        {
            let (waiting, shared, process) = (waiting.clone(), shared.clone(), child.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{id}-out"))
                .spawn(move || write_loop(id, output, rx, waiting, shared, process))
                .map_err(|e| fail("proxy", &e));
            if let Err(e) = spawned {
                kill(&child);
                return Err(e);
            }
        }
        {
            // Should this fail, dropping `tx` ends the writer, which ends the process.
            let (waiting, shared, child) = (waiting.clone(), shared.clone(), child.clone());
            std::thread::Builder::new()
                .name(format!("worker-{id}-in"))
                .spawn(move || read_loop(id, input, waiting, shared, child))
                .map_err(|e| fail("proxy", &e))?;
        }
        tracing::info!(worker = id, pid, "worker process started");
        Ok(WorkerHandle {
            id,
            tx,
            shared,
            pid: Some(pid),
        })
    }
}

/// Waits until `deadline` for the worker's connection: the first one to complete the
/// handshake with the link's client certificate. Any other connection (another local
/// process, a port scan) is logged and dropped, and the wait goes on.
fn accept_worker(
    id: WorkerId,
    listener: &TcpListener,
    config: &Arc<rustls::ServerConfig>,
    deadline: Instant,
) -> std::io::Result<(TcpStream, ServerConnection)> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match handshake(stream, config, left.min(HANDSHAKE_TIMEOUT)) {
                    Ok(link) => return Ok(link),
                    Err(e) => tracing::warn!(
                        worker = id,
                        %peer,
                        "refused a connection to the worker listener: {e}"
                    ),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "the worker did not connect within {} s",
                            CONNECT_DEADLINE.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // A connection reset before it was accepted: someone else's, keep waiting.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The node's side of the handshake on an accepted connection, within `timeout`. It succeeds
/// only for a peer holding the link's client certificate.
fn handshake(
    mut sock: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> std::io::Result<(TcpStream, ServerConnection)> {
    let mut tls = ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
    sock.set_nonblocking(false)?;
    let started = Instant::now();
    while tls.is_handshaking() {
        // A fresh timeout for each read, shrinking, so a peer trickling bytes cannot hold
        // the listener beyond `timeout` either.
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "no TLS handshake within the time allowed",
            ));
        }
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        match tls.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "no TLS handshake within the time allowed",
                ));
            }
            Err(e) => return Err(e),
        }
    }
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    Ok((sock, tls))
}

/// The reading half of the node's end of a worker link; [`LinkWriter`] is the other.
///
/// Requests and replies must flow independently: the node may queue many requests without
/// waiting, while the worker, which handles one request at a time, stops reading while it
/// is blocked writing a reply that nobody reads. One thread doing both would deadlock, so a
/// reader thread and a writer thread each own one handle of the socket (one only reads from
/// it, the other only writes to it) and share the TLS state behind a mutex. The lock is held
/// only to decrypt or encrypt bytes already in memory, never across a socket call, so a half
/// blocked on the socket never holds up the other: the reader keeps draining replies while
/// the writer waits for room, just as over two plain halves of a TCP connection. Only the
/// writer moves TLS output to the socket, in the order rustls queued it; anything the
/// reader's processing queues (a key update answer) goes out before the next request, and the
/// worker never waits for it.
struct LinkReader {
    sock: TcpStream,
    tls: Arc<Mutex<ServerConnection>>,
    wire: Box<[u8]>,
    plain: Vec<u8>,
    at: usize,
    closed: bool,
}

impl LinkReader {
    fn new(sock: TcpStream, tls: Arc<Mutex<ServerConnection>>) -> LinkReader {
        LinkReader {
            sock,
            tls,
            wire: vec![0; 1 << 16].into_boxed_slice(),
            plain: Vec::new(),
            at: 0,
            closed: false,
        }
    }
}

impl Read for LinkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if self.closed {
                return Ok(0);
            }
            self.plain.clear();
            self.at = 0;
            // Blocks without the lock.
            let n = self.sock.read(&mut self.wire)?;
            if n == 0 {
                return Ok(0);
            }
            let mut tls = lock(&self.tls);
            let mut input = &self.wire[..n];
            while !input.is_empty() {
                if tls.read_tls(&mut input)? == 0 {
                    // The peer closed the TLS session: what follows is not part of it.
                    break;
                }
                let state = tls
                    .process_new_packets()
                    .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
                // Drained every time, so rustls' plaintext buffer never fills up.
                let start = self.plain.len();
                self.plain
                    .resize(start + state.plaintext_bytes_to_read(), 0);
                tls.reader().read_exact(&mut self.plain[start..])?;
                self.closed |= state.peer_has_closed();
            }
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The writing half of the node's end of a worker link (see [`LinkReader`]).
struct LinkWriter {
    sock: TcpStream,
    tls: Arc<Mutex<ServerConnection>>,
    wire: Vec<u8>,
}

impl LinkWriter {
    fn new(sock: TcpStream, tls: Arc<Mutex<ServerConnection>>) -> LinkWriter {
        LinkWriter {
            sock,
            tls,
            wire: Vec::new(),
        }
    }
}

impl Write for LinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.wire.clear();
        {
            let mut tls = lock(&self.tls);
            let mut rest = buf;
            while !rest.is_empty() {
                // Encrypts as much as rustls buffers at once, then moves it out.
                let n = tls.writer().write(rest)?;
                rest = &rest[n..];
                while tls.wants_write() {
                    tls.write_tls(&mut self.wire)?;
                }
                if n == 0 {
                    return Err(ErrorKind::WriteZero.into());
                }
            }
        }
        // Blocks without the lock.
        self.sock.write_all(&self.wire)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kill(child: &Mutex<Child>) {
    let mut child = lock(child);
    let _ = child.kill();
    let _ = child.wait();
}

fn write_loop(
    id: WorkerId,
    mut out: LinkWriter,
    rx: mpsc::Receiver<Msg>,
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    shared: Arc<WorkerShared>,
    child: Arc<Mutex<Child>>,
) {
    while let Ok(msg) = rx.recv() {
        let (request, wait) = match msg {
            Msg::Process { batch, owners } => {
                // Only the records this worker aggregates cross the connection.
                let bucket = BucketOf::new(owners.len());
                let part = UploadBatch {
                    batch_id: batch.batch_id,
                    party: batch.party,
                    parties: batch.parties,
                    records: batch
                        .records
                        .iter()
                        .filter(|r| owners.get(bucket.of(&r.group)) == Some(&id))
                        .cloned()
                        .collect(),
                    histograms: batch.histograms.clone(),
                };
                let request = Request::Process {
                    batch: part,
                    owners: owners.to_vec(),
                };
                (request, Waiting::Nothing)
            }
            Msg::Decide { id, committed } => (Request::Decide { id, committed }, Waiting::Nothing),
            Msg::Release { bucket, reply } => (Request::Release { bucket }, Waiting::State(reply)),
            Msg::Install {
                bucket,
                state,
                done,
            } => (Request::Install { bucket, state }, Waiting::Done(done)),
            Msg::Take { windows, reply } => (
                Request::Take {
                    windows: windows.to_vec(),
                },
                Waiting::Windows(reply),
            ),
            Msg::Forget { windows } => (
                Request::Forget {
                    windows: windows.to_vec(),
                },
                Waiting::Nothing,
            ),
            Msg::Checkpoint { reply } => (Request::Checkpoint, Waiting::Snapshot(reply)),
            Msg::Stop { reply } => (Request::Stop, Waiting::Left(reply)),
            Msg::Crash => {
                // SIGKILL: the process gets no chance to hand anything over.
                kill(&child);
                return;
            }
        };
        lock(&waiting).push_back(wait);
        if !shared.alive.load(Ordering::Acquire) || write_frame(&mut out, &request).is_err() {
            // The process is gone: nobody will answer, so nobody may wait.
            lock(&waiting).clear();
            return;
        }
    }
    // The node let the worker go without a Stop (it shut down): end the process.
    kill(&child);
}

fn read_loop(
    id: WorkerId,
    mut input: LinkReader,
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    shared: Arc<WorkerShared>,
    child: Arc<Mutex<Child>>,
) {
    loop {
        let reply: Reply = match read_frame(&mut input) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(worker = id, "worker process connection ended: {e}");
                break;
            }
        };
        shared.busy_ns.fetch_add(reply.busy_ns, Ordering::Relaxed);
        shared.records.fetch_add(reply.records, Ordering::Relaxed);
        for (b, n) in reply.bucket_records {
            if let Some(c) = shared.bucket_records.get(b) {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        let Some(wait) = lock(&waiting).pop_front() else {
            break;
        };
        let stop = matches!(wait, Waiting::Left(_));
        match (wait, reply.body) {
            (Waiting::State(tx), Body::State(s)) => {
                let _ = tx.send(s);
            }
            (Waiting::Done(tx), Body::Done) => {
                let _ = tx.send(());
            }
            (Waiting::Windows(tx), Body::Windows(w)) => {
                let _ = tx.send(w);
            }
            (Waiting::Left(tx), Body::Left(l)) => {
                let _ = tx.send(l);
            }
            (Waiting::Snapshot(tx), Body::Snapshot(s)) => {
                let _ = tx.send(s);
            }
            (Waiting::Nothing, Body::Done) => {}
            _ => {
                tracing::error!(worker = id, "worker process answered out of turn");
                break;
            }
        }
        if stop {
            break;
        }
    }
    shared.alive.store(false, Ordering::Release);
    // Replies still awaited are dropped: their waiters see the worker gone.
    lock(&waiting).clear();
    kill(&child);
}

impl Request {
    /// A frame that names a bucket this worker was not started with is not the node's: it
    /// would index past the worker's per-bucket counters.
    fn check(&self, buckets: usize) -> Result<(), String> {
        match self {
            Request::Process { owners, .. } if owners.len() != buckets => Err(format!(
                "a batch frame with a map of {} buckets, where this worker has {buckets}",
                owners.len()
            )),
            Request::Release { bucket } | Request::Install { bucket, .. } if *bucket >= buckets => {
                Err(format!(
                    "a frame for bucket {bucket}, where this worker has {buckets}"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The `mcloud worker` process: connects to its node at `connect` (an IP address and port)
/// with `credentials` (the node's [`PrivateLink::client_pem`] for this worker, which it
/// received on stdin) and serves it until told to stop or the connection ends.
pub fn serve_worker(
    connect: &str,
    credentials: &str,
    id: WorkerId,
    buckets: usize,
    window_secs: u64,
    record_cost: Duration,
) -> Result<(), CloudError> {
    let fail = |e: &dyn std::fmt::Display| CloudError::Workers(format!("worker {id}: {e}"));
    let addr: SocketAddr = connect
        .parse()
        .map_err(|e| fail(&format!("node address {connect}: {e}")))?;
    let config = link_client_config(credentials).map_err(|e| fail(&e))?;
    let tls = ClientConnection::new(config, ServerName::IpAddress(addr.ip().into()))
        .map_err(|e| fail(&e))?;
    let sock = TcpStream::connect(addr).map_err(|e| fail(&e))?;
    let _ = sock.set_nodelay(true);
    // One thread reads a request, handles it and writes the reply, so one stream does.
    let mut link = StreamOwned::new(tls, sock);
    // The handshake first, so a node without the link's certificate is reported as such.
    while link.conn.is_handshaking() {
        link.conn
            .complete_io(&mut link.sock)
            .map_err(|e| fail(&format!("TLS handshake with {addr}: {e}")))?;
    }
    let shared = Arc::new(WorkerShared::new(buckets));
    let mut worker = Worker::new(id, window_secs, shared.clone(), record_cost);
    let mut seen = vec![0u64; buckets];
    let mut busy_seen = 0;
    let mut records_seen = 0;
    loop {
        let request: Request = match read_frame(&mut link) {
            Ok(r) => r,
            // Not the node's request: a TLS failure or a corrupt frame.
            Err(e) if e.kind() == ErrorKind::InvalidData => return Err(fail(&e)),
            // The node closed the connection: nothing of ours is durable, just leave.
            Err(_) => return Ok(()),
        };
        request.check(buckets).map_err(|e| fail(&e))?;
        let started = Instant::now();
        let (body, stop) = match request {
            Request::Process { batch, owners } => {
                worker.handle(Msg::Process {
                    batch: Arc::new(batch),
                    owners: Arc::new(owners),
                });
                (Body::Done, false)
            }
            Request::Decide { id, committed } => {
                worker.handle(Msg::Decide { id, committed });
                (Body::Done, false)
            }
            Request::Release { bucket } => {
                let (reply, mut rx) = oneshot::channel();
                worker.handle(Msg::Release { bucket, reply });
                (Body::State(rx.try_recv().unwrap_or_default()), false)
            }
            Request::Install { bucket, state } => {
                let (done, _rx) = oneshot::channel();
                worker.handle(Msg::Install {
                    bucket,
                    state,
                    done,
                });
                (Body::Done, false)
            }
            Request::Take { windows } => {
                let (reply, mut rx) = oneshot::channel();
                worker.handle(Msg::Take {
                    windows: Arc::new(windows),
                    reply,
                });
                (Body::Windows(rx.try_recv().unwrap_or_default()), false)
            }
            Request::Forget { windows } => {
                worker.handle(Msg::Forget {
                    windows: Arc::new(windows),
                });
                (Body::Done, false)
            }
            Request::Checkpoint => {
                let (reply, mut rx) = oneshot::channel();
                worker.handle(Msg::Checkpoint { reply });
                (Body::Snapshot(rx.try_recv().unwrap_or_default()), false)
            }
            Request::Stop => {
                let (reply, mut rx) = oneshot::channel();
                worker.handle(Msg::Stop { reply });
                (Body::Left(rx.try_recv().unwrap_or_default()), true)
            }
        };
        shared
            .busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let busy = shared.busy_ns.load(Ordering::Relaxed);
        let records = shared.records.load(Ordering::Relaxed);
        let mut bucket_records = Vec::new();
        for (b, c) in shared.bucket_records.iter().enumerate() {
            let now = c.load(Ordering::Relaxed);
            if now != seen[b] {
                bucket_records.push((b, now - seen[b]));
                seen[b] = now;
            }
        }
        let reply = Reply {
            busy_ns: busy - busy_seen,
            records: records - records_seen,
            bucket_records,
            body,
        };
        busy_seen = busy;
        records_seen = records;
        write_frame(&mut link, &reply).map_err(|e| fail(&e))?;
        if stop {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(owners: Vec<WorkerId>) -> Request {
        Request::Process {
            batch: UploadBatch {
                batch_id: BatchId(1),
                party: 0,
                parties: 2,
                records: Vec::new(),
                histograms: Vec::new(),
            },
            owners,
        }
    }

    #[test]
    fn frames_for_buckets_the_worker_lacks_are_refused() {
        assert_eq!(process(vec![1; 4]).check(4), Ok(()));
        // An empty map divided by zero and a longer one indexed past the counters.
        for owners in [vec![], vec![1; 5]] {
            let e = process(owners).check(4).unwrap_err();
            assert!(e.contains("where this worker has 4"), "{e}");
        }
        assert!(Request::Release { bucket: 3 }.check(4).is_ok());
        assert!(Request::Release { bucket: 4 }.check(4).is_err());
        let install = Request::Install {
            bucket: usize::MAX,
            state: BucketState::default(),
        };
        assert!(install.check(4).is_err());
    }
}
