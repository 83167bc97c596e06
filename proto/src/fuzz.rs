//! Entry points shared by the cargo-fuzz targets (`proto/fuzz`) and by the
//! short fixed-seed runs in the test suite. Each must return for any input
//! without panicking, and without allocating past the limits it is given.

use crate::http::{self, ContentEncoding, Framing, Limits};
use crate::ledger;
use crate::log::{self, RecordRead};
use crate::token;

/// Small limits, so the fuzzer reaches every limit quickly.
pub const FUZZ_LIMITS: Limits =
    Limits { header_bytes_max: 2048, body_bytes_max: 4096, decompress_ratio_max: 10 };

/// Decodes `data` as a stream of pipelined requests: heads, bodies and gzip.
pub fn http_request(data: &[u8]) {
    let mut rest = data;
    let mut body = Vec::new();
    let mut inflated = Vec::new();
    while !rest.is_empty() {
        let Ok(Some(head)) = http::decode_head(rest, &FUZZ_LIMITS) else { return };
        assert!(head.head_bytes <= FUZZ_LIMITS.header_bytes_max);
        assert!(head.path.end as usize <= head.head_bytes);
        let after_head = &rest[head.head_bytes..];
        body.clear();
        let used = match head.framing {
            Framing::Empty => 0,
            Framing::Length(n) => {
                if after_head.len() < n {
                    return;
                }
                body.extend_from_slice(&after_head[..n]);
                n
            }
            Framing::Chunked => {
                let mut decoder = http::ChunkedDecoder::new(FUZZ_LIMITS.body_bytes_max);
                match decoder.decode(after_head, &mut body) {
                    Ok(Some(n)) => n,
                    _ => return,
                }
            }
        };
        assert!(body.len() <= FUZZ_LIMITS.body_bytes_max);
        if head.encoding == ContentEncoding::Gzip {
            inflated.clear();
            let cap = http::gunzip_bytes_max(body.len(), &FUZZ_LIMITS);
            if http::gunzip(&body, &mut inflated, cap).is_ok() {
                assert!(inflated.len() <= cap);
            }
        }
        if let Some(query) = head.query {
            let _ = http::query_param(query.of(rest), "key");
        }
        rest = &after_head[used..];
    }
}

/// Decodes `data` as a token text and checks its tag under a fixed key.
pub fn token_text(data: &[u8]) {
    let mut scratch = Vec::new();
    if let Ok(view) = token::decode(data, token::CAVEATS_COUNT_MAX, &mut scratch) {
        assert!(view.caveat_count() <= token::CAVEATS_COUNT_MAX);
        for caveat in view.caveats() {
            assert!(token::Caveat::parse(caveat).is_ok());
        }
        let _ = view.verify_tag(&[0; 32]);
        // A decoded token re-encodes to the same text.
        let again = view.to_token().encode();
        assert_eq!(again.as_bytes(), data);
    }
}

/// Reads `data` as a log segment: records one after another, each body's
/// entries decoded; a valid entry re-encodes to the same bytes.
pub fn log_segment(data: &[u8]) {
    let mut at = 0;
    let mut encoded = Vec::new();
    while at < data.len() {
        let RecordRead::Record(header, body) = log::read_record(&data[at..]) else { return };
        assert!(header.count >= 1 && header.body_bytes as usize == body.len());
        let Ok((body, _marks)) = log::split_body(body, header.count) else { return };
        for entry in log::body_entries(body) {
            let Ok(bytes) = entry else { break };
            log_item_round_trip(bytes, &mut encoded);
        }
        at += header.padded_bytes();
    }
}

/// Decodes `bytes` as the log item its first byte names (every item format
/// of this crate); a valid item re-encodes to the same bytes.
pub fn log_item(bytes: &[u8]) {
    log_item_round_trip(bytes, &mut Vec::new());
}

fn log_item_round_trip(bytes: &[u8], encoded: &mut Vec<u8>) {
    encoded.clear();
    let decoded = match bytes.first() {
        Some(&crate::wallet::WALLET_OP_CODE) => {
            crate::wallet::WalletOp::decode(bytes).map(|op| op.encode(encoded))
        }
        Some(&crate::revocation::REVOCATION_CODE) => {
            crate::revocation::Revocation::decode(bytes).map(|r| r.encode(encoded))
        }
        _ => ledger::Entry::decode(bytes).map(|entry| entry.encode(encoded)),
    };
    if decoded.is_ok() {
        assert_eq!(encoded, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator, so the run is the same on every machine.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Mutates seed inputs the way a fuzzer would: flips, inserts, deletes, splices.
    fn mutants(seeds: &[&[u8]], count: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = SplitMix(seed);
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(rng.next() % 8) {
                let at = if input.is_empty() { 0 } else { (rng.next() as usize) % input.len() };
                match rng.next() % 4 {
                    0 if !input.is_empty() => input[at] ^= 1 << (rng.next() % 8),
                    1 => input.insert(at, rng.next() as u8),
                    2 if !input.is_empty() => {
                        input.remove(at);
                    }
                    _ => {
                        let other = seeds[(rng.next() as usize) % seeds.len()];
                        let from = (rng.next() as usize) % (other.len() + 1);
                        input.splice(at..at, other[from..].iter().copied());
                    }
                }
            }
            out.push(input);
        }
        out
    }

    fn seed() -> u64 {
        std::env::var("RON_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed)
    }

    #[test]
    fn http_request_decoder_survives_mutations() {
        let seeds: [&[u8]; 5] = [
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\n\r\n",
            b"POST /v1/x?key=a%20b HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x4b\x4c\x4a\x06\x00\xc2\x41\x24\x35\x03\x00\x00\x00",
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ];
        let seed = seed();
        for input in mutants(&seeds, 20_000, seed) {
            http_request(&input);
        }
    }

    #[test]
    fn token_decoder_survives_mutations() {
        let claims = token::Claims {
            kid: 1,
            token_id: [1; 16],
            epoch: 0,
            issued_at: 0,
            subject: "s".into(),
            audience: "ron-node".into(),
        };
        let token = token::Token::mint(&[0; 32], claims, &["scope=wallet.read", "exp=99"])
            .unwrap()
            .encode();
        let seeds: [&[u8]; 2] = [token.as_bytes(), b"ron1.AQAAAAAA"];
        let seed = seed();
        for input in mutants(&seeds, 20_000, seed) {
            token_text(&input);
        }
    }

    #[test]
    fn log_segment_reader_survives_mutations() {
        let mut writer = log::RecordWriter::default();
        writer.start();
        let mut encoded = Vec::new();
        let entry = ledger::Entry {
            id: "e1".into(),
            kind: ledger::EntryKind::Transfer,
            account: "alice".into(),
            asset: Some("roc".into()),
            amount: 5,
            ts: Some(9),
            memo: Some("m".into()),
        };
        entry.encode(&mut encoded);
        writer.push(&encoded);
        let op = crate::wallet::WalletOp {
            kind: crate::wallet::OpKind::Hold,
            from: Some("alice".into()),
            to: Some("bob".into()),
            asset: "roc".into(),
            amount: 5,
            nonce: Some(3),
            hold_id: Some([7; 16]),
            timeout_s: Some(30),
            idem: Some("k1".into()),
            txid: [1; 16],
            ts_ms: 9,
        };
        let mut encoded_op = Vec::new();
        op.encode(&mut encoded_op);
        writer.push(&encoded_op);
        let revocation = crate::revocation::Revocation {
            revoked: crate::revocation::Revoked::Subject("alice".into()),
            reason: "lost".into(),
            ts_ms: 9,
        };
        let mut encoded_revocation = Vec::new();
        revocation.encode(&mut encoded_revocation);
        writer.push(&encoded_revocation);
        let record = writer.seal(1, 0, [0; 32], [1; 32]).to_vec();
        // Mutations of a valid record mostly break its checksum; mutate the
        // items alone too, which is what the item decoders see.
        let seeds: [&[u8]; 4] = [&record, &encoded, &encoded_op, &encoded_revocation];
        for input in mutants(&seeds, 5_000, seed()) {
            log_segment(&input);
            log_item(&input);
        }
    }
}
