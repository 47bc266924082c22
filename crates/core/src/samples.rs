//! Where tests and demos find the real DEBS 2014 samples: `MCLOUD_DEBS_SAMPLE_DIR`, else
//! `../shared/data/debs2014` beside the workspace. Relative paths are taken from the
//! workspace root, so a test finds them whatever its working directory.

use std::path::PathBuf;

pub const SAMPLE_DIR_ENV: &str = "MCLOUD_DEBS_SAMPLE_DIR";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The sample directory, when it exists.
pub fn sample_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os(SAMPLE_DIR_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("../shared/data/debs2014"),
    };
    dir.is_dir().then_some(dir)
}

/// The path of one sample file, or `None` after printing why the caller skips.
pub fn sample_file(name: &str) -> Option<PathBuf> {
    match sample_dir().map(|d| d.join(name)) {
        Some(path) if path.is_file() => Some(path),
        _ => {
            eprintln!(
                "SKIPPED: DEBS sample {name} not found (set {SAMPLE_DIR_ENV} to the directory holding it)"
            );
            None
        }
    }
}
