//! The `mcloud` command: every role of the system in one binary.

pub mod access;
pub mod alerts;
pub mod analytics;
pub mod audit;
pub mod authority;
pub mod bench;
pub mod bench_debs;
pub mod bench_elastic;
pub mod bench_store;
pub mod bridge;
pub mod catalog_admin;
pub mod catalog_bench;
pub mod cluster;
pub mod config;
pub mod console;
pub mod demo;
/// The fuzz targets' bodies: the libFuzzer targets in `fuzz/` and the stable corpus test
/// (`tests/fuzz_corpus.rs`) share them, so what fuzzing found stays tested on stable.
pub mod fuzzing;
pub mod input;
pub mod mailbox;
pub mod malicious;
pub mod netns;
pub mod node;
pub mod plot;
pub mod process_demo;
pub mod processes;
pub mod queries;
pub mod query;
pub mod ramp;
pub mod sensor;
pub mod soak;
pub mod store;
