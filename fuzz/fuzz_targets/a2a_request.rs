#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concierge::fuzzing::a2a_request(data));
