#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcloud::fuzzing::robust_reports(data));
