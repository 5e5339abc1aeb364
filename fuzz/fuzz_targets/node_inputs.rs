#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mynet_tests::fuzz::node_inputs(data));
