//! How every redb file of mcloud is opened: with a bounded page cache.
//!
//! redb's default cache is 1 GiB per open file, filled by reads. A cloud that restarts reads
//! its whole values table once to rebuild its state, so with the default every restart left
//! the process holding as many pages as the table had (up to the cap), and memory grew with
//! each restart instead of staying flat. Writes and the reads mcloud does after a restart
//! (recent batches for a worker's replay, a checkpoint, a sealed window) touch few pages.

use redb::{Database, DatabaseError};
use std::path::Path;

/// Page cache per open file.
pub const CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the redb file at `path` with a cache of [`CACHE_BYTES`].
pub fn open(path: impl AsRef<Path>) -> Result<Database, DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}
