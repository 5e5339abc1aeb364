#![no_main]
//! Fuzz target `frames`; the body lives in `mynet_tests::fuzz::frames` so its corpus also runs as a test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mynet_tests::fuzz::frames(data));
