//! Workers as OS processes (`mcloud worker`), started and stopped by the node and talking to
//! it over a loopback TCP connection. The node keeps a proxy per process: a writer thread
//! turns the worker's queue into frames, a reader thread turns the answers (one per request,
//! in order) back into replies and counters. A process that dies closes the connection; the
//! proxy marks the worker dead and the node rebuilds its buckets.

use super::buckets::{BucketState, BucketWindow};
use super::provisioner::{Provisioner, WorkerHandle};
use super::worker::{Msg, Worker, WorkerId, WorkerShared};
use crate::CloudError;
use mcloud_core::wire::UploadBatch;
use mcloud_core::BatchId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Largest frame accepted, so a corrupt length cannot allocate without bound.
const MAX_FRAME: usize = 1 << 30;

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
    Windows(HashMap<u64, BucketWindow>),
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

fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    postcard::from_bytes(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
    Windows(oneshot::Sender<HashMap<u64, BucketWindow>>),
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
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CloudError::Workers(format!("worker process {id}: {what}: {e}"))
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("listening", &e))?;
        let addr = listener.local_addr().map_err(|e| fail("listening", &e))?;
        let child = Command::new(&self.program)
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
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| fail(&format!("starting {}", self.program.display()), &e))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("listening", &e))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        kill(&child);
                        return Err(fail("connecting", &"no connection within 20 s"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(fail("accepting", &e)),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(|e| fail("connection", &e))?;
        let _ = stream.set_nodelay(true);
        let reader = stream.try_clone().map_err(|e| fail("connection", &e))?;
        let shared = Arc::new(WorkerShared::new(buckets));
        let waiting: Arc<Mutex<VecDeque<Waiting>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<Msg>();
        {
            let (waiting, shared, child) = (waiting.clone(), shared.clone(), child.clone());
            std::thread::Builder::new()
                .name(format!("worker-{id}-out"))
                .spawn(move || write_loop(stream, rx, waiting, shared, child))
                .map_err(|e| fail("proxy", &e))?;
        }
        {
            let (waiting, shared, child) = (waiting.clone(), shared.clone(), child.clone());
            std::thread::Builder::new()
                .name(format!("worker-{id}-in"))
                .spawn(move || read_loop(id, reader, waiting, shared, child))
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kill(child: &Mutex<Child>) {
    let mut child = lock(child);
    let _ = child.kill();
    let _ = child.wait();
}

fn write_loop(
    stream: TcpStream,
    rx: mpsc::Receiver<Msg>,
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    shared: Arc<WorkerShared>,
    child: Arc<Mutex<Child>>,
) {
    let mut out = BufWriter::new(stream);
    while let Ok(msg) = rx.recv() {
        let (request, wait) = match msg {
            Msg::Process {
                batch,
                owners,
                records,
            } => {
                // Only the records this worker aggregates cross the connection.
                let part = UploadBatch {
                    batch_id: batch.batch_id,
                    party: batch.party,
                    parties: batch.parties,
                    records: records
                        .iter()
                        .filter_map(|&i| batch.records.get(i as usize).cloned())
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
    stream: TcpStream,
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    shared: Arc<WorkerShared>,
    child: Arc<Mutex<Child>>,
) {
    let mut input = BufReader::new(stream);
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

/// The `mcloud worker` process: connects to its node and serves it until told to stop or
/// the connection ends.
pub fn serve_worker(
    connect: &str,
    id: WorkerId,
    buckets: usize,
    window_secs: u64,
    record_cost: Duration,
) -> Result<(), CloudError> {
    let fail = |e: std::io::Error| CloudError::Workers(format!("worker {id}: {e}"));
    let stream = TcpStream::connect(connect).map_err(fail)?;
    let _ = stream.set_nodelay(true);
    let mut input = BufReader::new(stream.try_clone().map_err(fail)?);
    let mut out = BufWriter::new(stream);
    let shared = Arc::new(WorkerShared::new(buckets));
    let mut worker = Worker::new(id, window_secs, shared.clone(), record_cost);
    let mut seen = vec![0u64; buckets];
    let mut busy_seen = 0;
    let mut records_seen = 0;
    loop {
        let request: Request = match read_frame(&mut input) {
            Ok(r) => r,
            // The node closed the connection: nothing of ours is durable, just leave.
            Err(_) => return Ok(()),
        };
        let started = Instant::now();
        let (body, stop) = match request {
            Request::Process { batch, owners } => {
                let records = (0..batch.records.len() as u32).collect();
                worker.handle(Msg::Process {
                    batch: Arc::new(batch),
                    owners: Arc::new(owners),
                    records,
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
        write_frame(&mut out, &reply).map_err(fail)?;
        if stop {
            return Ok(());
        }
    }
}
