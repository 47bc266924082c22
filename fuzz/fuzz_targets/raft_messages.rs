#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcloud::fuzzing::raft_messages(data));
