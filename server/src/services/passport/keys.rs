//! The passport's keys (SPEC §6): per key id a root MAC key, an Ed25519
//! signing key and an ML-DSA-65 signing key, kept in `data_dir/keys` (0600
//! files in a 0700 directory) or, with amnesia, in RAM only. Key bytes are
//! wiped when dropped (`Zeroizing`, and both signature crates zeroize their
//! keys on drop).
//!
//! Rotation adds a key id and becomes the one new tokens are minted under;
//! older ids keep verifying until every token they minted has expired
//! (`ttl_max_s` plus the clock skew after the rotation), then they retire and
//! their files are removed at the next start.
//!
//! ML-DSA: Cryspen's `libcrux-ml-dsa` — FIPS 204 final, maintained, its
//! arithmetic formally verified (hax/F*), with an AVX2 path chosen at run
//! time, in Rust (no C toolchain on the build host, unlike the PQClean
//! bindings). Measured here (`cargo bench -p ron-bench --bench passport`):
//! a signature in 0.27 ms against 1.63 ms with RustCrypto's pure-Rust
//! `ml-dsa`, which the tests use as an independent verifier. Both derive
//! the key pair from the same 32-byte seed ξ (FIPS 204 KeyGen_internal),
//! which is what `data_dir/keys` stores. The expanded signing key is wiped
//! when the key set is dropped.

use anyhow::Context as _;
use ed25519_dalek::Signer as _;
use libcrux_ml_dsa::ml_dsa_65::{self, MLDSA65KeyPair};
use ron_proto::token::{Token, to_base64url};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize as _;
use zeroize::Zeroizing;

/// The keys of one key id.
pub struct KeySet {
    pub kid: u32,
    root: Zeroizing<[u8; 32]>,
    ed25519: ed25519_dalek::SigningKey,
    ml_dsa: Box<MLDSA65KeyPair>,
    ml_dsa_seed: Zeroizing<[u8; 32]>,
    /// From this unix second on, tokens of this id are refused.
    pub retire_at_s: Option<u64>,
}

impl Drop for KeySet {
    fn drop(&mut self) {
        self.ml_dsa.signing_key.as_mut_slice().zeroize();
    }
}

impl KeySet {
    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }

    pub fn sign_ed25519(&self, message: &[u8]) -> [u8; 64] {
        self.ed25519.sign(message).to_bytes()
    }

    /// Signs `token` as it is for third parties (its `sig.ed25519`
    /// caveat); returns the signature, base64url.
    pub fn attach_ed25519(&self, token: &mut Token) -> String {
        let sig = to_base64url(&self.sign_ed25519(&token.signed_message()));
        token.attach_signature(ron_proto::token::SIG_ED25519, &sig);
        sig
    }

    pub fn ed25519_public(&self) -> [u8; 32] {
        self.ed25519.verifying_key().to_bytes()
    }

    /// An ML-DSA-65 signature (empty context; hedged: fresh randomness per
    /// signature, or the deterministic variant if the system has none).
    pub fn sign_ml_dsa(&self, message: &[u8]) -> Vec<u8> {
        let mut randomness = [0u8; 32];
        let _ = getrandom::getrandom(&mut randomness);
        let signature = ml_dsa_65::sign(&self.ml_dsa.signing_key, message, b"", randomness)
            .expect("an empty context is in range");
        signature.as_slice().to_vec()
    }

    pub fn ml_dsa_public(&self) -> Vec<u8> {
        self.ml_dsa.verification_key.as_slice().to_vec()
    }

    pub fn verify_ml_dsa(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <[u8; 3309]>::try_from(signature) else { return false };
        let signature = libcrux_ml_dsa::MLDSASignature::new(signature);
        ml_dsa_65::verify(&self.ml_dsa.verification_key, message, b"", &signature).is_ok()
    }

    fn generate(kid: u32) -> anyhow::Result<(KeySet, KeyFiles)> {
        let files = KeyFiles { root: random()?, ed25519: random()?, ml_dsa: random()? };
        Ok((KeySet::from_files(kid, &files, None), files))
    }

    fn from_files(kid: u32, files: &KeyFiles, retire_at_s: Option<u64>) -> KeySet {
        KeySet {
            kid,
            root: Zeroizing::new(*files.root),
            ed25519: ed25519_dalek::SigningKey::from_bytes(&files.ed25519),
            ml_dsa: Box::new(ml_dsa_65::generate_key_pair(*files.ml_dsa)),
            ml_dsa_seed: Zeroizing::new(*files.ml_dsa),
            retire_at_s,
        }
    }
}

/// The secret bytes of one key id, as stored.
struct KeyFiles {
    root: Zeroizing<[u8; 32]>,
    ed25519: Zeroizing<[u8; 32]>,
    /// The FIPS 204 seed ξ.
    ml_dsa: Zeroizing<[u8; 32]>,
}

fn random() -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut *bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes)
}

/// Every key id this node verifies, newest last, and the JWKS of their
/// public keys.
pub struct Keyring {
    sets: Vec<KeySet>,
    jwks: Vec<u8>,
    etag: String,
    /// Why new tokens cannot be minted, if they cannot.
    pub issuance_unavailable: Option<String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never key bytes.
        let kids: Vec<u32> = self.sets.iter().map(|s| s.kid).collect();
        f.debug_struct("Keyring").field("kids", &kids).finish_non_exhaustive()
    }
}

impl Keyring {
    fn new(mut sets: Vec<KeySet>, issuance_unavailable: Option<String>) -> Keyring {
        assert!(!sets.is_empty(), "a keyring has a key");
        sets.sort_by_key(|s| s.kid);
        let jwks = render_jwks(&sets);
        let etag = format!("\"{}\"", &blake3::hash(&jwks).to_hex()[..16]);
        Keyring { sets, jwks, etag, issuance_unavailable }
    }

    /// The root key of `kid`, if it still verifies at `now_s`.
    pub fn root(&self, kid: u32, now_s: u64) -> Option<&[u8; 32]> {
        self.set(kid).filter(|s| s.retire_at_s.is_none_or(|at| now_s < at)).map(KeySet::root)
    }

    pub fn set(&self, kid: u32) -> Option<&KeySet> {
        self.sets.iter().find(|s| s.kid == kid)
    }

    /// The key new tokens are minted under: the newest.
    pub fn current(&self) -> &KeySet {
        self.sets.last().expect("a keyring has a key")
    }

    pub fn kids(&self) -> impl Iterator<Item = &KeySet> {
        self.sets.iter()
    }

    /// `GET /v1/keys`: the JWKS and its entity tag.
    pub fn jwks(&self) -> (&[u8], &str) {
        (&self.jwks, &self.etag)
    }
}

fn render_jwks(sets: &[KeySet]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Jwk<'a> {
        kty: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        crv: Option<&'a str>,
        alg: &'a str,
        #[serde(rename = "use")]
        usage: &'a str,
        kid: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        x: Option<String>,
        #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
        public: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retire_at: Option<u64>,
    }
    #[derive(serde::Serialize)]
    struct Jwks<'a> {
        keys: Vec<Jwk<'a>>,
    }
    let mut keys = Vec::with_capacity(sets.len() * 2);
    for set in sets {
        keys.push(Jwk {
            kty: "OKP",
            crv: Some("Ed25519"),
            alg: "EdDSA",
            usage: "sig",
            kid: set.kid.to_string(),
            x: Some(to_base64url(&set.ed25519_public())),
            public: None,
            retire_at: set.retire_at_s,
        });
        keys.push(Jwk {
            kty: "AKP",
            crv: None,
            alg: "ML-DSA-65",
            usage: "sig",
            kid: set.kid.to_string(),
            x: None,
            public: Some(to_base64url(&set.ml_dsa_public())),
            retire_at: set.retire_at_s,
        });
    }
    simd_json::to_vec(&Jwks { keys }).expect("serializing")
}

/// Where keys are kept: a directory, or nowhere (amnesia).
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: Option<PathBuf>,
}

/// Writes `dir/name` (0600) in place of any earlier one, durably: a
/// temporary file, synced, renamed over it, and the directory synced.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = io(
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary),
        &temporary,
    )?;
    io(file.write_all(bytes), &temporary)?;
    io(file.sync_all(), &temporary)?;
    io(fs::rename(&temporary, &path), &path)?;
    io(fs::File::open(dir).and_then(|d| d.sync_all()), dir)
}

fn io<T>(result: std::io::Result<T>, path: &Path) -> anyhow::Result<T> {
    result.with_context(|| format!("key store {}", path.display()))
}

impl KeyStore {
    pub fn new(dir: Option<PathBuf>) -> KeyStore {
        KeyStore { dir }
    }

    /// Loads every key id (creating the first, and any signing key an older
    /// build did not write), removing those retired by `now_s`.
    pub fn load(&self, now_s: u64) -> anyhow::Result<Keyring> {
        let Some(dir) = &self.dir else {
            let (set, _) = KeySet::generate(1)?;
            return Ok(Keyring::new(vec![set], None));
        };
        io(fs::DirBuilder::new().recursive(true).mode(0o700).create(dir), dir)?;
        let mut kids = Vec::new();
        for entry in io(fs::read_dir(dir), dir)? {
            let name = io(entry, dir)?.file_name();
            let kid = name
                .to_str()
                .and_then(|n| n.strip_prefix("root-"))
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok());
            kids.extend(kid);
        }
        kids.sort_unstable();
        if kids.is_empty() {
            let (set, files) = KeySet::generate(1)?;
            self.write(1, &files, None)?;
            tracing::info!(kid = 1, dir = %dir.display(), "created the first keys");
            return Ok(Keyring::new(vec![set], None));
        }
        let mut sets = Vec::with_capacity(kids.len());
        let mut unavailable = None;
        let newest = *kids.last().expect("not empty");
        for kid in kids {
            let retire_at_s = self.read_retire(kid)?;
            if retire_at_s.is_some_and(|at| at <= now_s) && kid != newest {
                self.remove(kid)?;
                tracing::info!(kid, "removed retired keys");
                continue;
            }
            let root = self
                .read_secret(&format!("root-{kid}.key"))?
                .with_context(|| format!("root-{kid}.key is not a 32-byte key"))?;
            let mut signing = |name: &str| -> anyhow::Result<Zeroizing<[u8; 32]>> {
                match self.read_secret(name) {
                    Ok(Some(key)) => Ok(key),
                    Ok(None) if !dir.join(name).exists() => {
                        // Written by a build before signatures: add it.
                        let key = random()?;
                        self.write_secret(name, &*key)?;
                        Ok(key)
                    }
                    Ok(None) | Err(_) => {
                        let why = format!("signing key {name} cannot be read");
                        tracing::error!(%why, "issuance is unavailable; tokens still verify");
                        unavailable.get_or_insert(why);
                        random()
                    }
                }
            };
            let files = KeyFiles {
                root,
                ed25519: signing(&format!("ed25519-{kid}.key"))?,
                ml_dsa: signing(&format!("mldsa65-{kid}.key"))?,
            };
            sets.push(KeySet::from_files(kid, &files, retire_at_s));
        }
        self.sync()?;
        Ok(Keyring::new(sets, unavailable))
    }

    /// Adds a key id after the newest; every older one retires at
    /// `retire_at_s` (unless it retires earlier already). Files are
    /// written and synced before the new ring is returned.
    pub fn rotate(&self, ring: &Keyring, retire_at_s: u64) -> anyhow::Result<Keyring> {
        let kid = ring.current().kid + 1;
        let (set, files) = KeySet::generate(kid)?;
        self.write(kid, &files, None)?;
        let mut sets = Vec::with_capacity(ring.sets.len() + 1);
        for old in &ring.sets {
            let retire = old.retire_at_s.map_or(retire_at_s, |at| at.min(retire_at_s));
            if self.dir.is_some() {
                self.write_retire(old.kid, retire)?;
            }
            let files = KeyFiles {
                root: Zeroizing::new(*old.root),
                ed25519: Zeroizing::new(old.ed25519.to_bytes()),
                ml_dsa: Zeroizing::new(*old.ml_dsa_seed),
            };
            sets.push(KeySet::from_files(old.kid, &files, Some(retire)));
        }
        sets.push(set);
        self.sync()?;
        Ok(Keyring::new(sets, None))
    }

    fn write(&self, kid: u32, files: &KeyFiles, retire_at_s: Option<u64>) -> anyhow::Result<()> {
        if self.dir.is_none() {
            return Ok(());
        }
        self.write_secret(&format!("ed25519-{kid}.key"), &*files.ed25519)?;
        self.write_secret(&format!("mldsa65-{kid}.key"), &*files.ml_dsa)?;
        if let Some(at) = retire_at_s {
            self.write_retire(kid, at)?;
        }
        // The root key last: a kid exists once its root file does.
        self.write_secret(&format!("root-{kid}.key"), &*files.root)?;
        self.sync()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_ref().expect("a key directory").join(name)
    }

    fn read_secret(&self, name: &str) -> anyhow::Result<Option<Zeroizing<[u8; 32]>>> {
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        Ok(<[u8; 32]>::try_from(bytes.as_slice()).ok().map(Zeroizing::new))
    }

    fn write_secret(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(name);
        let mut file =
            io(fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path), &path)?;
        io(file.write_all(bytes), &path)?;
        io(file.sync_all(), &path)
    }

    fn read_retire(&self, kid: u32) -> anyhow::Result<Option<u64>> {
        let path = self.path(&format!("retire-{kid}"));
        match fs::read_to_string(&path) {
            Ok(text) => {
                let at = text.trim().parse().with_context(|| format!("{}", path.display()))?;
                Ok(Some(at))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write_retire(&self, kid: u32, at_s: u64) -> anyhow::Result<()> {
        let dir = self.dir.as_ref().expect("a key directory");
        replace_file(dir, &format!("retire-{kid}"), at_s.to_string().as_bytes())
    }

    fn remove(&self, kid: u32) -> anyhow::Result<()> {
        // The root key first: without it the kid is gone.
        for name in [
            format!("root-{kid}.key"),
            format!("ed25519-{kid}.key"),
            format!("mldsa65-{kid}.key"),
            format!("retire-{kid}"),
        ] {
            let path = self.path(&name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).with_context(|| format!("{}", path.display())),
            }
        }
        self.sync()
    }

    fn sync(&self) -> anyhow::Result<()> {
        match &self.dir {
            Some(dir) => io(fs::File::open(dir).and_then(|d| d.sync_all()), dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile_dir::Dir, KeyStore) {
        let dir = tempfile_dir::Dir::new();
        let store = KeyStore::new(Some(dir.0.join("keys")));
        (dir, store)
    }

    /// A directory removed when dropped (the server crate has no tempfile).
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("ron-keys-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn created_loaded_rotated_and_retired() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        let ring = store.load(1_000).unwrap();
        assert_eq!(ring.current().kid, 1);
        let dir = store.dir.clone().unwrap();
        for name in ["root-1.key", "ed25519-1.key", "mldsa65-1.key"] {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let again = store.load(1_000).unwrap();
        assert_eq!(again.current().root(), ring.current().root());
        assert_eq!(again.current().ed25519_public(), ring.current().ed25519_public());
        assert_eq!(again.current().ml_dsa_public(), ring.current().ml_dsa_public());
        assert_eq!(again.jwks(), ring.jwks());

        let rotated = store.rotate(&again, 2_000).unwrap();
        assert_eq!(rotated.current().kid, 2);
        assert!(rotated.root(1, 1_999).is_some(), "the old kid verifies until it retires");
        assert!(rotated.root(1, 2_000).is_none());
        assert!(rotated.root(2, u64::MAX).is_some());
        assert_ne!(rotated.jwks().1, again.jwks().1, "a new ETag");
        // A restart before the retirement keeps both; after it, only the new.
        assert!(store.load(1_500).unwrap().root(1, 1_500).is_some());
        let later = store.load(2_001).unwrap();
        assert!(later.set(1).is_none());
        assert!(!dir.join("root-1.key").exists());
        assert_eq!(later.current().kid, 2);
        assert!(later.issuance_unavailable.is_none());
    }

    #[test]
    fn unreadable_signing_keys_stop_issuance_not_verification() {
        let (_dir, store) = store();
        let ring = store.load(1).unwrap();
        let dir = store.dir.clone().unwrap();
        fs::write(dir.join("ed25519-1.key"), b"short").unwrap();
        let damaged = store.load(1).unwrap();
        assert!(damaged.issuance_unavailable.is_some());
        assert_eq!(damaged.root(1, 1), ring.root(1, 1));
    }

    #[test]
    fn both_ml_dsa_implementations_derive_the_same_key_from_a_seed() {
        use ml_dsa::signature::{Keypair as _, Verifier as _};
        let (set, files) = KeySet::generate(3).unwrap();
        let other = ml_dsa::SigningKey::<ml_dsa::MlDsa65>::from_seed(&(*files.ml_dsa).into());
        assert_eq!(other.verifying_key().encode().to_vec(), set.ml_dsa_public());
        let signature = set.sign_ml_dsa(b"batch");
        let signature = ml_dsa::Signature::<ml_dsa::MlDsa65>::try_from(&signature[..]).unwrap();
        assert!(other.verifying_key().verify(b"batch", &signature).is_ok());
    }

    #[test]
    fn signatures_verify() {
        let (set, _) = KeySet::generate(7).unwrap();
        let signature = set.sign_ml_dsa(b"root");
        assert_eq!(signature.len(), 3309);
        assert!(set.verify_ml_dsa(b"root", &signature));
        assert!(!set.verify_ml_dsa(b"other", &signature));
        let ed = set.sign_ed25519(b"header");
        let public = ed25519_dalek::VerifyingKey::from_bytes(&set.ed25519_public()).unwrap();
        let ed = ed25519_dalek::Signature::from_bytes(&ed);
        assert!(public.verify_strict(b"header", &ed).is_ok());
    }
}
