#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcloud::fuzzing::worker_frames(data));
