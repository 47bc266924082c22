//! The fuzz corpora on stable: every file of every `fuzz/corpus/<target>/` goes through the
//! same body the libFuzzer target runs (`mcloud::fuzzing`), so an input that once crashed a
//! target (its fix keeps it in the corpus) stays caught where libFuzzer cannot run. A corpus
//! directory that is missing or empty fails the test.
//!
//! `cargo test -p mcloud --test fuzz_corpus -- --ignored write_seeds` writes the seed inputs
//! (`mcloud::fuzzing::seeds`) into the corpus directories.

use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn run_corpus(target: &str) {
    let (_, body) = mcloud::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of mcloud::fuzzing");
    let dir = corpus_root().join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("a readable corpus file");
        if std::panic::catch_unwind(|| body(&bytes)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} fail: {failed:#?}",
        failed.len(),
        files.len()
    );
}

macro_rules! corpus_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                run_corpus(stringify!($target));
            }
        )*

        /// Every target of `mcloud::fuzzing` has its test above.
        #[test]
        fn every_target_is_tested() {
            let tested = [$(stringify!($target)),*];
            for (name, _) in mcloud::fuzzing::TARGETS {
                assert!(tested.contains(name), "no corpus test for {name}");
            }
        }
    };
}

corpus_tests!(
    cloud_requests,
    catalog_requests,
    raft_messages,
    worker_frames,
    credentials,
    config_files,
    csv_input,
    robust_reports,
);

/// A few lines of real DEBS 2014 data, where the machine has them.
fn debs_lines() -> String {
    let file = Path::new("/work/shared/data/debs2014/smartgrid_input_2seconds.csv");
    let lines: Vec<String> = std::fs::read_to_string(file)
        .map(|text| text.lines().take(6).map(str::to_string).collect())
        .unwrap_or_else(|_| {
            vec![
                "1,1377986401,68.451,0,11,0,0".into(),
                "2,1377986401,19.927,1,11,0,0".into(),
            ]
        });
    lines.join("\n") + "\n"
}

/// Writes the seed inputs into `fuzz/corpus/<target>/seed-<name>` (run by hand, see above).
#[test]
#[ignore]
fn write_seeds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (target, name, bytes) in mcloud::fuzzing::seeds(&repo, &debs_lines()) {
        let dir = corpus_root().join(target);
        std::fs::create_dir_all(&dir).expect("a corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed file");
    }
}
