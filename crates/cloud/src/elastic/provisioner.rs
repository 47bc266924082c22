//! Where workers run. The manager only asks for a worker and later lets it go; how the worker
//! is hosted is the provisioner's business.

use super::worker::{Msg, Worker, WorkerId, WorkerShared};
use crate::CloudError;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A running worker as the node sees it: a queue to it and its counters.
#[derive(Clone)]
pub struct WorkerHandle {
    pub id: WorkerId,
    pub tx: mpsc::Sender<Msg>,
    pub shared: Arc<WorkerShared>,
    /// The worker's process, when it runs in its own.
    pub pid: Option<u32>,
}

pub trait Provisioner: Send + Sync {
    fn name(&self) -> &'static str;
    fn start(
        &self,
        id: WorkerId,
        buckets: usize,
        window_secs: u64,
    ) -> Result<WorkerHandle, CloudError>;
}

/// Workers as threads of the node process: the default, and what the demo uses.
#[derive(Clone, Debug, Default)]
pub struct InProcess {
    /// Simulated operator cost per record, zero in production use.
    pub record_cost: Duration,
}

impl Provisioner for InProcess {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn start(
        &self,
        id: WorkerId,
        buckets: usize,
        window_secs: u64,
    ) -> Result<WorkerHandle, CloudError> {
        let shared = Arc::new(WorkerShared::new(buckets));
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(id, window_secs, shared.clone(), self.record_cost);
        std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| CloudError::Workers(format!("starting worker {id}: {e}")))?;
        Ok(WorkerHandle {
            id,
            tx,
            shared,
            pid: None,
        })
    }
}
