//! Pipelined HTTP/1.1 requests: heads, Content-Length and chunked bodies,
//! gzip with its ratio cap, query parameters.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ron_proto::fuzz::http_request(data));
