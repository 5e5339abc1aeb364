#![no_main]
//! Fuzz target `log_record`; the body lives in `mynet_tests::fuzz::log_record` so its corpus also runs as a test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mynet_tests::fuzz::log_record(data));
