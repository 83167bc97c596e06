//! Log segments: record headers, checksums, length-prefixed entries, entry
//! decoding and canonical re-encoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ron_proto::fuzz::log_segment(data));
