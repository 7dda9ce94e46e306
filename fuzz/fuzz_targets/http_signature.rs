#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concierge::fuzzing::http_signature(data));
