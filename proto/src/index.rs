//! The index's wire vocabulary (SPEC §7): content ids, names, asset kinds
//! and owner references with the original svc-index's validation rules and
//! messages; the request bodies of its routes; its log items; the ETag of
//! an answer.
//!
//! Log items, little-endian (owner references: `len u16 | bytes`, length 0
//! for none):
//!
//! ```text
//! site pointer   0x40 | name_len u8 | name | manifest [32] | subject | wallet | updated_at_ms u64
//! asset pointer  0x41 | asset [32] | kind u8 | manifest [32] | subject | wallet | updated_at_ms u64
//! provider       0x42 | cid [32] | ttl_s u32 | expires_ms u64 | node_len u16 | node
//! ```

use crate::log::{DecodeError, ITEM_BYTES_MAX, Reader};
use serde::Deserialize;
use std::fmt;

/// The first byte of a site pointer item.
pub const SITE_CODE: u8 = 0x40;
/// The first byte of an asset pointer item.
pub const ASSET_CODE: u8 = 0x41;
/// The first byte of a provider record item.
pub const PROVIDER_CODE: u8 = 0x42;

/// Names, in bytes (after trimming).
pub const NAME_BYTES_MAX: usize = 253;
/// Owner references, in bytes (after trimming).
pub const OWNER_REF_BYTES_MAX: usize = 512;
/// Provider node URIs, in bytes (after trimming).
pub const NODE_URI_BYTES_MAX: usize = 256;
/// The record version pointers are stored and answered with.
pub const POINTER_VERSION: u16 = 1;

const SITE_BYTES_MAX: usize = 2 + NAME_BYTES_MAX + 32 + 2 * (2 + OWNER_REF_BYTES_MAX) + 8;
const ASSET_BYTES_MAX: usize = 1 + 32 + 1 + 32 + 2 * (2 + OWNER_REF_BYTES_MAX) + 8;
const PROVIDER_BYTES_MAX: usize = 1 + 32 + 4 + 8 + 2 + NODE_URI_BYTES_MAX;
const _: () = assert!(SITE_BYTES_MAX <= ITEM_BYTES_MAX, "a site pointer is one log item");
const _: () = assert!(ASSET_BYTES_MAX <= ITEM_BYTES_MAX, "an asset pointer is one log item");
const _: () = assert!(PROVIDER_BYTES_MAX <= ITEM_BYTES_MAX, "a provider is one log item");

/// A content id: the BLAKE3 digest of the bytes, written `b3:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub [u8; 32]);

impl Cid {
    /// The content id of `bytes`.
    pub fn of(bytes: &[u8]) -> Cid {
        Cid(*blake3::hash(bytes).as_bytes())
    }

    /// The original's lenient form, for path segments and `manifest_cid`:
    /// trimmed, `b3:` optional, 64 lowercase hex digits.
    pub fn normalize(input: &str) -> Result<Cid, &'static str> {
        let trimmed = input.trim();
        let raw = trimmed.strip_prefix("b3:").unwrap_or(trimmed);
        if raw.len() != 64 {
            return Err("cid must be 64 lowercase hex characters, optionally prefixed with b3:");
        }
        Cid::from_lower_hex(raw).ok_or("cid must use lowercase hex characters only")
    }

    /// The strict form of keys and provider routes: exactly `b3:` and 64
    /// lowercase hex digits.
    pub fn parse(text: &str) -> Option<Cid> {
        let raw = text.strip_prefix("b3:")?;
        if raw.len() != 64 {
            return None;
        }
        Cid::from_lower_hex(raw)
    }

    fn from_lower_hex(raw: &str) -> Option<Cid> {
        let lower = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        if !raw.as_bytes().iter().all(lower) {
            return None;
        }
        crate::merkle::from_hex(raw).map(Cid)
    }

    /// Writes `b3:<hex>` into `out`.
    pub fn write(&self, out: &mut String) {
        out.push_str("b3:");
        out.push_str(&crate::merkle::to_hex(&self.0));
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", crate::merkle::to_hex(&self.0))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What an asset is; the original's list, stored as its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AssetKind(u8);

impl AssetKind {
    pub const NAMES: [&'static str; 13] = [
        "image", "video", "stream", "music", "song", "podcast", "article", "post", "comment",
        "page", "site", "app", "manifest",
    ];

    /// The original's rule: no control characters, trimmed, lowercased,
    /// one of [`AssetKind::NAMES`].
    pub fn normalize(input: &str) -> Result<AssetKind, &'static str> {
        if input.chars().any(char::is_control) {
            return Err("asset kind contains control characters");
        }
        let kind = input.trim().to_ascii_lowercase();
        if kind.is_empty() {
            return Err("asset kind is required");
        }
        let at = AssetKind::NAMES.iter().position(|name| *name == kind);
        at.map(|at| AssetKind(at as u8)).ok_or("unsupported asset kind")
    }

    pub fn as_str(self) -> &'static str {
        AssetKind::NAMES[usize::from(self.0)]
    }

    fn from_code(code: u8) -> Option<AssetKind> {
        (usize::from(code) < AssetKind::NAMES.len()).then_some(AssetKind(code))
    }
}

/// The original's site name rule: no control characters, trimmed and
/// lowercased, 1..=253 bytes of `[a-z0-9._-]`, no `/ \ @ ..`, no leading
/// or trailing dot.
pub fn normalize_name(input: &str) -> Result<String, &'static str> {
    if input.chars().any(char::is_control) {
        return Err("name contains control characters");
    }
    let name = input.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err("name is required");
    }
    if name.len() > NAME_BYTES_MAX {
        return Err("name is too long");
    }
    if name.contains(['/', '\\', '@'])
        || name.contains("..")
        || name.starts_with('.')
        || name.ends_with('.')
    {
        return Err("name contains unsafe path or credential characters");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if !name.bytes().all(allowed) {
        return Err("name contains unsupported characters");
    }
    Ok(name)
}

/// The original's owner reference rule: no control characters, trimmed,
/// empty is none, at most 512 bytes.
pub fn normalize_owner_ref(field: &str, value: Option<&str>) -> Result<Option<String>, String> {
    let Some(value) = value else { return Ok(None) };
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.len() > OWNER_REF_BYTES_MAX {
        return Err(format!("{field} is too long"));
    }
    Ok(Some(trimmed.to_owned()))
}

/// `updated_at_ms`: zero is refused, absent is `now_ms`.
pub fn normalize_updated_at(value: Option<u64>, now_ms: u64) -> Result<u64, &'static str> {
    match value {
        Some(0) => Err("updated_at_ms must be greater than zero"),
        Some(value) => Ok(value),
        None => Ok(now_ms),
    }
}

/// svc-dht's node URI rule: trimmed, not empty, no whitespace, contains
/// `://`; and here at most [`NODE_URI_BYTES_MAX`] bytes.
pub fn valid_node_uri(node: &str) -> bool {
    let node = node.trim();
    !node.is_empty()
        && node.len() <= NODE_URI_BYTES_MAX
        && !node.contains(char::is_whitespace)
        && node.contains("://")
}

/// What `/resolve/{key}` is asked about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `name:<name>`, the name normalized.
    Name(String),
    /// `b3:<64 hex>`.
    Cid(Cid),
}

impl Key {
    /// A resolve key: strict `b3:` or `name:` and a valid name.
    pub fn parse(text: &str) -> Result<Key, &'static str> {
        if let Some(name) = text.strip_prefix("name:") {
            return normalize_name(name).map(Key::Name);
        }
        Cid::parse(text).map(Key::Cid).ok_or("invalid key")
    }

    /// The key's canonical text.
    pub fn write(&self, out: &mut String) {
        match self {
            Key::Name(name) => {
                out.push_str("name:");
                out.push_str(name);
            }
            Key::Cid(cid) => cid.write(out),
        }
    }
}

/// The body of `PUT /v1/index/sites/{name}/manifest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSite {
    pub manifest_cid: String,
    #[serde(default)]
    pub owner_passport_subject: Option<String>,
    #[serde(default)]
    pub owner_wallet_account: Option<String>,
    #[serde(default)]
    pub updated_at_ms: Option<u64>,
}

/// The body of `PUT /v1/index/assets/{asset_cid}/manifest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutAsset {
    pub asset_kind: String,
    pub manifest_cid: String,
    #[serde(default)]
    pub owner_passport_subject: Option<String>,
    #[serde(default)]
    pub owner_wallet_account: Option<String>,
    #[serde(default)]
    pub updated_at_ms: Option<u64>,
}

/// The body of `POST /dht/provide`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provide {
    pub cid: String,
    pub node: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Who owns a pointer (references only, not verified).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub passport_subject: Option<String>,
    pub wallet_account: Option<String>,
}

impl Owners {
    /// The original's rules, in its order (subject, then wallet).
    pub fn normalize(subject: Option<&str>, wallet: Option<&str>) -> Result<Owners, String> {
        Ok(Owners {
            passport_subject: normalize_owner_ref("owner_passport_subject", subject)?,
            wallet_account: normalize_owner_ref("owner_wallet_account", wallet)?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for owner in [&self.passport_subject, &self.wallet_account] {
            let owner = owner.as_deref().unwrap_or("");
            assert!(owner.len() <= OWNER_REF_BYTES_MAX, "owner references are checked first");
            out.extend_from_slice(&(owner.len() as u16).to_le_bytes());
            out.extend_from_slice(owner.as_bytes());
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Owners, DecodeError> {
        let mut owner = || -> Result<Option<String>, DecodeError> {
            let len = usize::from(u16::from_le_bytes(reader.array()?));
            if len > OWNER_REF_BYTES_MAX {
                return Err(DecodeError::Invalid("owner reference"));
            }
            let text = reader.utf8(len, "owner reference")?;
            Ok((!text.is_empty()).then_some(text))
        };
        Ok(Owners { passport_subject: owner()?, wallet_account: owner()? })
    }
}

/// A site's pointer to its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePointer {
    pub name: String,
    pub manifest: Cid,
    pub owners: Owners,
    pub updated_at_ms: u64,
}

/// An asset's pointer to its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetPointer {
    pub asset: Cid,
    pub kind: AssetKind,
    pub manifest: Cid,
    pub owners: Owners,
    pub updated_at_ms: u64,
}

/// A node that provides a cid, until `expires_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    pub cid: Cid,
    pub node: String,
    /// The TTL it was provided with (its score is the part left).
    pub ttl_s: u32,
    pub expires_ms: u64,
}

/// One of the index's log items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexItem {
    Site(SitePointer),
    Asset(AssetPointer),
    Provider(ProviderRecord),
}

impl IndexItem {
    /// The bytes that route the item to its owner shard (the same as the
    /// reads of it use: see [`Key::route`]).
    pub fn route(&self) -> Route<'_> {
        match self {
            IndexItem::Site(site) => Route::Name(&site.name),
            IndexItem::Asset(asset) => Route::Cid(&asset.asset),
            IndexItem::Provider(record) => Route::Cid(&record.cid),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            IndexItem::Site(site) => {
                assert!(!site.name.is_empty() && site.name.len() <= NAME_BYTES_MAX);
                out.push(SITE_CODE);
                out.push(site.name.len() as u8);
                out.extend_from_slice(site.name.as_bytes());
                out.extend_from_slice(&site.manifest.0);
                site.owners.encode(out);
                out.extend_from_slice(&site.updated_at_ms.to_le_bytes());
            }
            IndexItem::Asset(asset) => {
                out.push(ASSET_CODE);
                out.extend_from_slice(&asset.asset.0);
                out.push(asset.kind.0);
                out.extend_from_slice(&asset.manifest.0);
                asset.owners.encode(out);
                out.extend_from_slice(&asset.updated_at_ms.to_le_bytes());
            }
            IndexItem::Provider(record) => {
                assert!(valid_node_uri(&record.node), "node URIs are checked first");
                out.push(PROVIDER_CODE);
                out.extend_from_slice(&record.cid.0);
                out.extend_from_slice(&record.ttl_s.to_le_bytes());
                out.extend_from_slice(&record.expires_ms.to_le_bytes());
                out.extend_from_slice(&(record.node.len() as u16).to_le_bytes());
                out.extend_from_slice(record.node.as_bytes());
            }
        }
        debug_assert!(out.len() - start <= ITEM_BYTES_MAX);
    }

    pub fn decode(bytes: &[u8]) -> Result<IndexItem, DecodeError> {
        if bytes.len() > ITEM_BYTES_MAX {
            return Err(DecodeError::Invalid("index item too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        let item = match reader.u8()? {
            SITE_CODE => {
                let name = reader.text(NAME_BYTES_MAX, "site name")?;
                if normalize_name(&name).as_deref() != Ok(name.as_str()) {
                    return Err(DecodeError::Invalid("site name"));
                }
                IndexItem::Site(SitePointer {
                    name,
                    manifest: Cid(reader.array()?),
                    owners: Owners::decode(&mut reader)?,
                    updated_at_ms: u64::from_le_bytes(reader.array()?),
                })
            }
            ASSET_CODE => IndexItem::Asset(AssetPointer {
                asset: Cid(reader.array()?),
                kind: AssetKind::from_code(reader.u8()?)
                    .ok_or(DecodeError::Invalid("asset kind"))?,
                manifest: Cid(reader.array()?),
                owners: Owners::decode(&mut reader)?,
                updated_at_ms: u64::from_le_bytes(reader.array()?),
            }),
            PROVIDER_CODE => {
                let cid = Cid(reader.array()?);
                let ttl_s = u32::from_le_bytes(reader.array()?);
                let expires_ms = u64::from_le_bytes(reader.array()?);
                let len = usize::from(u16::from_le_bytes(reader.array()?));
                if len > NODE_URI_BYTES_MAX {
                    return Err(DecodeError::Invalid("provider node"));
                }
                let node = reader.utf8(len, "provider node")?;
                if !valid_node_uri(&node) || node.trim() != node {
                    return Err(DecodeError::Invalid("provider node"));
                }
                IndexItem::Provider(ProviderRecord { cid, node, ttl_s, expires_ms })
            }
            _ => return Err(DecodeError::Invalid("not an index item")),
        };
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the index item"));
        }
        Ok(item)
    }
}

/// What an index key routes by: names and cids are hashed apart, so a name
/// that spells a cid's hex does not share its owner by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Name(&'a str),
    Cid(&'a Cid),
}

impl Route<'_> {
    /// The shard that owns it.
    pub fn owner(self, shard_count: usize) -> usize {
        let mut key = [0u8; 1 + NAME_BYTES_MAX];
        const _: () = assert!(NAME_BYTES_MAX >= 32);
        let len = match self {
            Route::Name(name) => {
                key[0] = b'n';
                key[1..1 + name.len()].copy_from_slice(name.as_bytes());
                1 + name.len()
            }
            Route::Cid(cid) => {
                key[0] = b'c';
                key[1..33].copy_from_slice(&cid.0);
                33
            }
        };
        crate::routing::owner(&key[..len], shard_count)
    }
}

impl Key {
    pub fn route(&self) -> Route<'_> {
        match self {
            Key::Name(name) => Route::Name(name),
            Key::Cid(cid) => Route::Cid(cid),
        }
    }
}

/// The strong ETag of an answer: `b3:` and the BLAKE3 digest of its
/// manifest (or none) and its provider ids, in sorted order, so the same
/// manifest and provider set always give the same tag whatever order or
/// scores they are answered with.
pub fn etag<'a>(manifest: Option<&Cid>, providers: impl IntoIterator<Item = &'a str>) -> Cid {
    let mut ids: Vec<&str> = providers.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ron-index-etag\0");
    match manifest {
        Some(cid) => hasher.update(&[1]).update(&cid.0),
        None => hasher.update(&[0]),
    };
    for id in ids {
        hasher.update(&(id.len() as u32).to_le_bytes());
        hasher.update(id.as_bytes());
    }
    Cid(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ASSET: &str = "b3:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn cids_take_the_originals_spellings() {
        let cid = Cid::normalize(ASSET).unwrap();
        assert_eq!(cid.to_string(), ASSET);
        assert_eq!(Cid::normalize(&ASSET[3..]).unwrap(), cid);
        assert_eq!(Cid::normalize(&format!("  {ASSET}\t")).unwrap(), cid);
        let upper = ASSET.to_uppercase().replace("B3:", "b3:");
        assert_eq!(Cid::normalize(&upper), Err("cid must use lowercase hex characters only"));
        assert_eq!(
            Cid::normalize("b3:abc"),
            Err("cid must be 64 lowercase hex characters, optionally prefixed with b3:")
        );
        let bad_char = format!("b3:{}g", &ASSET[3..66]);
        assert_eq!(Cid::normalize(&bad_char), Err("cid must use lowercase hex characters only"));
        // Keys and provider routes take only the strict form.
        assert_eq!(Cid::parse(ASSET), Some(cid));
        assert_eq!(Cid::parse(&ASSET[3..]), None);
        assert_eq!(Cid::parse(&format!(" {ASSET}")), None);
        assert_eq!(Cid::parse(&upper), None);
    }

    #[test]
    fn names_kinds_and_owners_follow_the_original() {
        assert_eq!(normalize_name("SeaLobsta.COM").unwrap(), "sealobsta.com");
        assert_eq!(normalize_name("  my-site_1  ").unwrap(), "my-site_1");
        let refused = [
            ("", "name is required"),
            ("   ", "name is required"),
            ("a\u{7}b", "name contains control characters"),
            ("a/b", "name contains unsafe path or credential characters"),
            ("a\\b", "name contains unsafe path or credential characters"),
            ("user@host", "name contains unsafe path or credential characters"),
            ("a..b", "name contains unsafe path or credential characters"),
            (".", "name contains unsafe path or credential characters"),
            (".hidden", "name contains unsafe path or credential characters"),
            ("trailing.", "name contains unsafe path or credential characters"),
            ("with space", "name contains unsupported characters"),
            ("ünïcode", "name contains unsupported characters"),
        ];
        for (input, message) in refused {
            assert_eq!(normalize_name(input), Err(message), "{input:?}");
        }
        assert_eq!(normalize_name(&"a".repeat(253)).unwrap().len(), 253);
        assert_eq!(normalize_name(&"a".repeat(254)), Err("name is too long"));

        assert_eq!(AssetKind::normalize(" IMAGE ").unwrap().as_str(), "image");
        for name in AssetKind::NAMES {
            assert_eq!(AssetKind::normalize(name).unwrap().as_str(), name);
        }
        assert_eq!(AssetKind::normalize("  "), Err("asset kind is required"));
        assert_eq!(AssetKind::normalize("binary"), Err("unsupported asset kind"));
        assert_eq!(AssetKind::normalize("im\nage"), Err("asset kind contains control characters"));

        let owners = Owners::normalize(Some("  alice "), Some("   ")).unwrap();
        assert_eq!(owners.passport_subject.as_deref(), Some("alice"));
        assert_eq!(owners.wallet_account, None);
        let long = "x".repeat(513);
        assert_eq!(
            Owners::normalize(None, Some(&long)).unwrap_err(),
            "owner_wallet_account is too long"
        );
        assert_eq!(
            Owners::normalize(Some("a\u{0}"), None).unwrap_err(),
            "owner_passport_subject contains control characters"
        );
        assert!(Owners::normalize(Some(&"x".repeat(512)), None).is_ok());
        assert_eq!(
            normalize_updated_at(Some(0), 5),
            Err("updated_at_ms must be greater than zero")
        );
        assert_eq!(normalize_updated_at(None, 5), Ok(5));
    }

    #[test]
    fn node_uris_follow_svc_dht() {
        assert!(valid_node_uri("http://127.0.0.1:8080"));
        assert!(valid_node_uri("  local://nodeA "));
        for bad in ["", "   ", "not a uri", "nodeA", "http://a b"] {
            assert!(!valid_node_uri(bad), "{bad:?}");
        }
        let long = format!("http://{}", "a".repeat(NODE_URI_BYTES_MAX));
        assert!(!valid_node_uri(&long));
    }

    #[test]
    fn keys_are_strict_cids_or_valid_names() {
        let cid = Cid::parse(ASSET).unwrap();
        assert_eq!(Key::parse(ASSET), Ok(Key::Cid(cid)));
        assert_eq!(Key::parse("name:Example.com"), Ok(Key::Name("example.com".into())));
        assert_eq!(Key::parse(&ASSET[3..]), Err("invalid key"));
        assert_eq!(Key::parse("b3:xyz"), Err("invalid key"));
        assert_eq!(Key::parse("name:"), Err("name is required"));
        assert_eq!(
            Key::parse("name:a/b"),
            Err("name contains unsafe path or credential characters")
        );
        assert_eq!(Key::parse("other:thing"), Err("invalid key"));
    }

    fn any_owner() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z0-9:_ -]{1,64}".prop_map(|s| s.trim().to_owned()))
            .prop_map(|o| o.filter(|s| !s.is_empty()))
    }

    fn any_item() -> impl Strategy<Value = IndexItem> {
        let cid = any::<[u8; 32]>().prop_map(Cid);
        let name = "[a-z0-9][a-z0-9_-]{0,60}(\\.[a-z0-9_-]{1,20}){0,3}";
        let owners = || {
            (any_owner(), any_owner()).prop_map(|(passport_subject, wallet_account)| Owners {
                passport_subject,
                wallet_account,
            })
        };
        prop_oneof![
            (name, cid.clone(), owners(), 1..u64::MAX).prop_map(|(name, manifest, owners, at)| {
                IndexItem::Site(SitePointer { name, manifest, owners, updated_at_ms: at })
            }),
            (cid.clone(), 0..13u8, cid.clone(), owners(), 1..u64::MAX).prop_map(
                |(asset, kind, manifest, owners, at)| {
                    let kind = AssetKind(kind);
                    IndexItem::Asset(AssetPointer {
                        asset,
                        kind,
                        manifest,
                        owners,
                        updated_at_ms: at,
                    })
                }
            ),
            (cid, "[a-z]{1,8}://[a-z0-9.:-]{1,64}", any::<u32>(), any::<u64>()).prop_map(
                |(cid, node, ttl_s, expires_ms)| {
                    IndexItem::Provider(ProviderRecord { cid, node, ttl_s, expires_ms })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn items_round_trip_and_refuse_every_cut(item in any_item()) {
            let mut bytes = Vec::new();
            item.encode(&mut bytes);
            prop_assert!(bytes.len() <= ITEM_BYTES_MAX);
            prop_assert_eq!(IndexItem::decode(&bytes), Ok(item));
            for cut in 0..bytes.len() {
                prop_assert!(IndexItem::decode(&bytes[..cut]).is_err());
            }
            bytes.push(0);
            prop_assert!(IndexItem::decode(&bytes).is_err());
        }

        #[test]
        fn normalized_names_are_fixed_points(input in "\\PC{0,300}") {
            if let Ok(name) = normalize_name(&input) {
                prop_assert_eq!(normalize_name(&name), Ok(name.clone()));
                prop_assert!(name.len() <= NAME_BYTES_MAX);
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
                prop_assert_eq!(Key::parse(&format!("name:{name}")), Ok(Key::Name(name)));
            }
        }

        #[test]
        fn cids_round_trip_through_both_spellings(bytes in any::<[u8; 32]>()) {
            let cid = Cid(bytes);
            let text = cid.to_string();
            prop_assert_eq!(Cid::parse(&text), Some(cid));
            prop_assert_eq!(Cid::normalize(&text[3..]), Ok(cid));
            prop_assert_eq!(Key::parse(&text), Ok(Key::Cid(cid)));
        }

        #[test]
        fn arbitrary_text_never_panics_the_rules(input in "\\PC{0,80}") {
            let _ = Cid::normalize(&input);
            let _ = Cid::parse(&input);
            let _ = Key::parse(&input);
            let _ = AssetKind::normalize(&input);
            let _ = valid_node_uri(&input);
            let _ = IndexItem::decode(input.as_bytes());
        }

        #[test]
        fn the_etag_depends_on_the_set_not_its_order(
            manifest in proptest::option::of(any::<[u8; 32]>().prop_map(Cid)),
            mut ids in proptest::collection::vec("[a-z]{1,4}://[a-z0-9]{1,8}", 0..8),
            other in "[a-z]{1,4}://[a-z0-9]{1,8}",
        ) {
            let tag = etag(manifest.as_ref(), ids.iter().map(String::as_str));
            ids.reverse();
            prop_assert_eq!(etag(manifest.as_ref(), ids.iter().map(String::as_str)), tag);
            if !ids.contains(&other) {
                let with = etag(manifest.as_ref(), ids.iter().chain([&other]).map(String::as_str));
                prop_assert_ne!(with, tag);
            }
            let changed = manifest.map_or(Some(Cid([0; 32])), |_| None);
            prop_assert_ne!(etag(changed.as_ref(), ids.iter().map(String::as_str)), tag);
        }
    }
}
