//! Criterion benches of the passport's signatures: ML-DSA-65 signing with
//! the two Rust implementations considered (RustCrypto `ml-dsa`, Cryspen
//! `libcrux-ml-dsa` with AVX2), Ed25519, and minting plus verifying a MAC
//! token. `cargo bench -p ron-bench --bench passport`.

use criterion::{Criterion, criterion_group, criterion_main};
use ron_proto::token::{self, Claims, Token};
use std::hint::black_box;

const MESSAGE: &[u8] = b"ron1.pq-batch\0 kid shard batch size and a 32-byte Merkle root...";

fn ml_dsa(c: &mut Criterion) {
    let mut group = c.benchmark_group("ml_dsa_65");
    let seed = [7u8; 32];
    let rustcrypto = ml_dsa::SigningKey::<ml_dsa::MlDsa65>::from_seed(&seed.into());
    group.bench_function("sign_rustcrypto", |b| {
        use ml_dsa::signature::Signer as _;
        b.iter(|| {
            let signature: ml_dsa::Signature<ml_dsa::MlDsa65> = rustcrypto.sign(black_box(MESSAGE));
            signature
        })
    });
    let pair = libcrux_ml_dsa::ml_dsa_65::generate_key_pair(seed);
    group.bench_function("sign_libcrux", |b| {
        b.iter(|| {
            libcrux_ml_dsa::ml_dsa_65::sign(&pair.signing_key, black_box(MESSAGE), b"", [9; 32])
                .expect("signs")
        })
    });
    let signature =
        libcrux_ml_dsa::ml_dsa_65::sign(&pair.signing_key, MESSAGE, b"", [9; 32]).expect("signs");
    group.bench_function("verify_libcrux", |b| {
        b.iter(|| {
            libcrux_ml_dsa::ml_dsa_65::verify(&pair.verification_key, MESSAGE, b"", &signature)
        })
    });
    group.finish();
}

fn classic(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    c.bench_function("ed25519_sign", |b| {
        use ed25519_dalek::Signer as _;
        b.iter(|| key.sign(black_box(MESSAGE)))
    });
    let claims = Claims {
        kid: 1,
        token_id: [1; 16],
        epoch: 0,
        issued_at: 1_700_000_000,
        subject: "bench-subject".into(),
        audience: "ron-node".into(),
    };
    let root = [5u8; 32];
    c.bench_function("token_mint_encode", |b| {
        b.iter(|| {
            Token::mint(&root, claims.clone(), &["scope=wallet.read", "exp=1800000000"])
                .expect("mints")
                .encode()
        })
    });
    let text = Token::mint(&root, claims.clone(), &["scope=wallet.read", "exp=1800000000"])
        .expect("mints")
        .encode();
    let mut scratch = Vec::new();
    c.bench_function("token_decode_verify_tag", |b| {
        b.iter(|| {
            let view =
                token::decode(black_box(text.as_bytes()), 64, &mut scratch).expect("decodes");
            view.verify_tag(&root)
        })
    });
}

criterion_group!(benches, ml_dsa, classic);
criterion_main!(benches);
