//! Passport token text: decoding limits, caveat parsing, tag check,
//! canonical re-encoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ron_proto::fuzz::token_text(data));
