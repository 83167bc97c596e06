//! The passport token (SPEC §6): a macaroon-style bearer token.
//!
//! Text form: `ron1.` + base64url (no padding) of
//!
//! ```text
//! header   version u8 = 1 | kid u32 | token_id [16] | epoch u64 | issued_at u64
//!          | subject_len u16 | subject | audience_len u16 | audience
//! caveats  count u16 | (len u16 | "key=value")*
//! tag      [32]
//! ```
//!
//! Integers are little-endian. The tag is a chain of BLAKE3 keyed hashes:
//! `t0 = keyed(root_key[kid], header)`, `t_i = keyed(t_{i-1}, caveat_i)`, and
//! the token carries the last one. Anyone holding a token can append a caveat
//! (attenuate) by hashing it under the current tag; nobody can remove one,
//! because that needs an earlier tag, which no token reveals.
//!
//! Caveats only ever restrict. `scope=a,b` allows the listed scopes; several
//! scope caveats allow their intersection, so attenuation can narrow scopes
//! but never widen them.

use base64::Engine as _;

pub const TOKEN_PREFIX: &str = "ron1.";
pub const FORMAT_VERSION: u8 = 1;
pub const TAG_BYTES: usize = 32;
pub const TOKEN_ID_BYTES: usize = 16;
/// Hard ceiling on caveats; the configured `passport.caveats_max` is at most this.
pub const CAVEATS_COUNT_MAX: usize = 64;
pub const CAVEAT_BYTES_MAX: usize = 256;
pub const NAME_BYTES_MAX: usize = 256;
const HEADER_FIXED_BYTES: usize = 1 + 4 + TOKEN_ID_BYTES + 8 + 8 + 2 + 2;
/// The largest binary token the format allows.
pub const TOKEN_BINARY_BYTES_MAX: usize = HEADER_FIXED_BYTES
    + 2 * NAME_BYTES_MAX
    + 2
    + CAVEATS_COUNT_MAX * (2 + CAVEAT_BYTES_MAX)
    + TAG_BYTES;
/// Text tokens longer than this are refused before any decoding.
pub const TOKEN_TEXT_BYTES_MAX: usize = TOKEN_PREFIX.len() + TOKEN_BINARY_BYTES_MAX.div_ceil(3) * 4;
const _: () = assert!(TOKEN_TEXT_BYTES_MAX < 32 * 1024, "a token fits well inside a header");

/// The first bytes of every message a node signs for a token.
pub const SIGNED_DOMAIN: &[u8] = b"ron1.sig\0";
/// The caveat carrying an Ed25519 signature (base64url) of the token so far.
pub const SIG_ED25519: &str = "sig.ed25519";
/// The caveat carrying the token's place in an ML-DSA-65 signed batch.
pub const SIG_ML_DSA: &str = "sig.ml-dsa-65";

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Base64url without padding, the encoding of tokens, their signature
/// caveats and the published keys.
pub fn to_base64url(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub fn from_base64url(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// Every scope of SPEC §6.
pub mod scope {
    pub const WALLET_READ: &str = "wallet.read";
    pub const WALLET_ISSUE: &str = "wallet.issue";
    pub const WALLET_TRANSFER: &str = "wallet.transfer";
    pub const WALLET_BURN: &str = "wallet.burn";
    pub const LEDGER_INGEST: &str = "ledger.ingest";
    pub const INDEX_READ: &str = "index.read";
    pub const INDEX_WRITE: &str = "index.write";
    pub const REWARDER_RUN: &str = "rewarder.run";
    pub const REWARDER_INSPECT: &str = "rewarder.inspect";
    pub const PASSPORT_ISSUE: &str = "passport.issue";
    pub const PASSPORT_ADMIN: &str = "passport.admin";
    pub const ALL: [&str; 11] = [
        WALLET_READ,
        WALLET_ISSUE,
        WALLET_TRANSFER,
        WALLET_BURN,
        LEDGER_INGEST,
        INDEX_READ,
        INDEX_WRITE,
        REWARDER_RUN,
        REWARDER_INSPECT,
        PASSPORT_ISSUE,
        PASSPORT_ADMIN,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than [`TOKEN_TEXT_BYTES_MAX`], or more caveats than allowed.
    TooLarge,
    /// Not a token of this format.
    Malformed(&'static str),
    /// A caveat this version does not know (fail closed).
    UnknownCaveat,
}

/// The claims of a token header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub kid: u32,
    pub token_id: [u8; TOKEN_ID_BYTES],
    pub epoch: u64,
    pub issued_at: u64,
    pub subject: String,
    pub audience: String,
}

/// A decoded token that borrows the caller's buffer; nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub struct TokenView<'a> {
    pub kid: u32,
    pub token_id: [u8; TOKEN_ID_BYTES],
    pub epoch: u64,
    pub issued_at: u64,
    pub subject: &'a str,
    pub audience: &'a str,
    header: &'a [u8],
    caveats: &'a [u8],
    caveat_count: usize,
    tag: [u8; TAG_BYTES],
}

impl<'a> TokenView<'a> {
    pub fn caveats(&self) -> CaveatIter<'a> {
        CaveatIter { rest: self.caveats, left: self.caveat_count }
    }

    pub fn caveat_count(&self) -> usize {
        self.caveat_count
    }

    /// Recomputes the tag chain under `root_key` and compares in constant time.
    pub fn verify_tag(&self, root_key: &[u8; 32]) -> bool {
        let mut tag = blake3::keyed_hash(root_key, self.header);
        for caveat in self.caveats() {
            tag = blake3::keyed_hash(tag.as_bytes(), caveat.as_bytes());
        }
        // blake3::Hash compares in constant time.
        tag == blake3::Hash::from(self.tag)
    }

    /// What a node signs for third parties ([`signed_message`]) over this
    /// token's first `caveats` caveats.
    pub fn signed_message(&self, caveats: usize) -> Vec<u8> {
        let mut message = Vec::with_capacity(SIGNED_DOMAIN.len() + self.header.len() + 256);
        message.extend_from_slice(SIGNED_DOMAIN);
        message.extend_from_slice(self.header);
        for caveat in self.caveats().take(caveats) {
            message.extend_from_slice(&(caveat.len() as u16).to_le_bytes());
            message.extend_from_slice(caveat.as_bytes());
        }
        message
    }

    pub fn to_token(&self) -> Token {
        Token {
            claims: Claims {
                kid: self.kid,
                token_id: self.token_id,
                epoch: self.epoch,
                issued_at: self.issued_at,
                subject: self.subject.to_owned(),
                audience: self.audience.to_owned(),
            },
            caveats: self.caveats().map(str::to_owned).collect(),
            tag: self.tag,
        }
    }
}

/// The caveats of a [`TokenView`], in order.
#[derive(Clone, Debug)]
pub struct CaveatIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for CaveatIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let len = usize::from(u16::from_le_bytes([self.rest[0], self.rest[1]]));
        let text = &self.rest[2..2 + len];
        self.rest = &self.rest[2 + len..];
        // Checked when the view was decoded.
        Some(std::str::from_utf8(text).expect("caveats are checked UTF-8"))
    }
}

/// Decodes the text form of a token. `scratch` receives the binary form and is
/// borrowed by the view; reusing it keeps verification allocation-free.
pub fn decode<'a>(
    text: &[u8],
    caveats_max: usize,
    scratch: &'a mut Vec<u8>,
) -> Result<TokenView<'a>, TokenError> {
    assert!(caveats_max <= CAVEATS_COUNT_MAX);
    if text.len() > TOKEN_TEXT_BYTES_MAX {
        return Err(TokenError::TooLarge);
    }
    let Some(body) = text.strip_prefix(TOKEN_PREFIX.as_bytes()) else {
        return Err(TokenError::Malformed("missing ron1. prefix"));
    };
    scratch.clear();
    BASE64.decode_vec(body, scratch).map_err(|_| TokenError::Malformed("invalid base64url"))?;
    parse_binary(scratch, caveats_max, true)
}

/// Decodes the binary form of a token (as [`decode`] leaves it in its
/// scratch buffer).
pub fn decode_binary(bytes: &[u8], caveats_max: usize) -> Result<TokenView<'_>, TokenError> {
    assert!(caveats_max <= CAVEATS_COUNT_MAX);
    parse_binary(bytes, caveats_max, true)
}

/// [`decode_binary`] of bytes that decoded before (a verify cache): the
/// framing is checked again, each caveat's syntax is not.
pub fn decode_decoded(bytes: &[u8], caveats_max: usize) -> Result<TokenView<'_>, TokenError> {
    assert!(caveats_max <= CAVEATS_COUNT_MAX);
    parse_binary(bytes, caveats_max, false)
}

fn parse_binary(
    bytes: &[u8],
    caveats_max: usize,
    check_caveats: bool,
) -> Result<TokenView<'_>, TokenError> {
    const SHORT: TokenError = TokenError::Malformed("truncated token");
    let mut reader = Reader { bytes, at: 0 };
    if reader.u8().ok_or(SHORT)? != FORMAT_VERSION {
        return Err(TokenError::Malformed("unknown token version"));
    }
    let kid = reader.u32().ok_or(SHORT)?;
    let token_id: [u8; TOKEN_ID_BYTES] =
        reader.take(TOKEN_ID_BYTES).ok_or(SHORT)?.try_into().expect("16 bytes");
    let epoch = reader.u64().ok_or(SHORT)?;
    let issued_at = reader.u64().ok_or(SHORT)?;
    let subject = reader.name()?;
    let audience = reader.name()?;
    let header_end = reader.at;
    let caveat_count = usize::from(reader.u16().ok_or(SHORT)?);
    if caveat_count > caveats_max {
        return Err(TokenError::TooLarge);
    }
    let caveats_start = reader.at;
    for _ in 0..caveat_count {
        let len = usize::from(reader.u16().ok_or(SHORT)?);
        if len == 0 || len > CAVEAT_BYTES_MAX {
            return Err(TokenError::Malformed("caveat length out of range"));
        }
        let text = reader.take(len).ok_or(SHORT)?;
        let text =
            std::str::from_utf8(text).map_err(|_| TokenError::Malformed("caveat is not UTF-8"))?;
        if check_caveats {
            Caveat::parse(text)?;
        }
    }
    let caveats_end = reader.at;
    let tag: [u8; TAG_BYTES] = reader.take(TAG_BYTES).ok_or(SHORT)?.try_into().expect("32 bytes");
    if reader.at != bytes.len() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    Ok(TokenView {
        kid,
        token_id,
        epoch,
        issued_at,
        subject,
        audience,
        header: &bytes[..header_end],
        caveats: &bytes[caveats_start..caveats_end],
        caveat_count,
        tag,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn name(&mut self) -> Result<&'a str, TokenError> {
        let len = usize::from(self.u16().ok_or(TokenError::Malformed("truncated token"))?);
        if len > NAME_BYTES_MAX {
            return Err(TokenError::Malformed("name too long"));
        }
        let bytes = self.take(len).ok_or(TokenError::Malformed("truncated token"))?;
        std::str::from_utf8(bytes).map_err(|_| TokenError::Malformed("name is not UTF-8"))
    }
}

/// An owned token, for minting and attenuation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub claims: Claims,
    caveats: Vec<String>,
    tag: [u8; TAG_BYTES],
}

impl Token {
    /// Mints a token under `root_key` with the given caveats. At least one
    /// must be a scope caveat: a verifier refuses unscoped tokens, and if one
    /// could be minted, adding a scope to it would widen it.
    pub fn mint(
        root_key: &[u8; 32],
        claims: Claims,
        caveats: &[&str],
    ) -> Result<Token, TokenError> {
        if claims.subject.len() > NAME_BYTES_MAX || claims.audience.len() > NAME_BYTES_MAX {
            return Err(TokenError::Malformed("name too long"));
        }
        if !caveats.iter().any(|c| c.starts_with("scope=")) {
            return Err(TokenError::Malformed("a token needs a scope caveat"));
        }
        let mut header =
            Vec::with_capacity(HEADER_FIXED_BYTES + claims.subject.len() + claims.audience.len());
        encode_header(&claims, &mut header);
        let tag = *blake3::keyed_hash(root_key, &header).as_bytes();
        let mut token = Token { claims, caveats: Vec::with_capacity(caveats.len()), tag };
        for caveat in caveats {
            token.attenuate(caveat)?;
        }
        Ok(token)
    }

    /// Appends a caveat; needs no key.
    pub fn attenuate(&mut self, caveat: &str) -> Result<(), TokenError> {
        if caveat.is_empty() || caveat.len() > CAVEAT_BYTES_MAX {
            return Err(TokenError::Malformed("caveat length out of range"));
        }
        if self.caveats.len() == CAVEATS_COUNT_MAX {
            return Err(TokenError::TooLarge);
        }
        Caveat::parse(caveat)?;
        self.tag = *blake3::keyed_hash(&self.tag, caveat.as_bytes()).as_bytes();
        self.caveats.push(caveat.to_owned());
        Ok(())
    }

    pub fn caveats(&self) -> &[String] {
        &self.caveats
    }

    /// Appends a signature caveat `alg=value` of the token so far (an
    /// issuing node's; see [`Token::signed_message`]).
    pub fn attach_signature(&mut self, alg: &str, value: &str) {
        debug_assert!(alg == SIG_ED25519 || alg == SIG_ML_DSA);
        self.attenuate(&format!("{alg}={value}")).expect("signature caveats fit");
    }

    /// What a node signs for third parties: a domain tag, the header, and
    /// every caveat so far, each length-prefixed. A signature caveat
    /// appended after these covers the token as issued; caveats added later
    /// only narrow it.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(SIGNED_DOMAIN.len() + 128 + 64 * self.caveats.len());
        message.extend_from_slice(SIGNED_DOMAIN);
        encode_header(&self.claims, &mut message);
        for caveat in &self.caveats {
            message.extend_from_slice(&(caveat.len() as u16).to_le_bytes());
            message.extend_from_slice(caveat.as_bytes());
        }
        message
    }

    pub fn encode(&self) -> String {
        let mut binary = Vec::with_capacity(TOKEN_BINARY_BYTES_MAX);
        encode_header(&self.claims, &mut binary);
        binary.extend_from_slice(&(self.caveats.len() as u16).to_le_bytes());
        for caveat in &self.caveats {
            binary.extend_from_slice(&(caveat.len() as u16).to_le_bytes());
            binary.extend_from_slice(caveat.as_bytes());
        }
        binary.extend_from_slice(&self.tag);
        assert!(binary.len() <= TOKEN_BINARY_BYTES_MAX);
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + binary.len().div_ceil(3) * 4);
        text.push_str(TOKEN_PREFIX);
        BASE64.encode_string(&binary, &mut text);
        text
    }
}

fn encode_header(claims: &Claims, out: &mut Vec<u8>) {
    assert!(claims.subject.len() <= NAME_BYTES_MAX && claims.audience.len() <= NAME_BYTES_MAX);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&claims.kid.to_le_bytes());
    out.extend_from_slice(&claims.token_id);
    out.extend_from_slice(&claims.epoch.to_le_bytes());
    out.extend_from_slice(&claims.issued_at.to_le_bytes());
    out.extend_from_slice(&(claims.subject.len() as u16).to_le_bytes());
    out.extend_from_slice(claims.subject.as_bytes());
    out.extend_from_slice(&(claims.audience.len() as u16).to_le_bytes());
    out.extend_from_slice(claims.audience.as_bytes());
}

/// One parsed caveat. Values borrow the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caveat<'a> {
    /// Not valid at or after this unix second.
    Exp(u64),
    /// Not valid before this unix second.
    Nbf(u64),
    Aud(&'a str),
    /// A comma-separated list of allowed scopes.
    Scope(&'a str),
    Account(&'a str),
    AccountPrefix(&'a str),
    Asset(&'a str),
    AmountMax(u128),
    /// A path prefix.
    Route(&'a str),
    Method(&'a str),
    /// A CIDR block the peer address must lie in.
    Ip(&'a str),
    RateRps(u32),
    Tenant(&'a str),
    BudgetBytes(u64),
    /// A signature for third parties ([`SIG_ED25519`], [`SIG_ML_DSA`]):
    /// restricts nothing.
    Signature {
        alg: &'a str,
        value: &'a str,
    },
}

impl<'a> Caveat<'a> {
    pub fn parse(text: &'a str) -> Result<Caveat<'a>, TokenError> {
        const MALFORMED: TokenError = TokenError::Malformed("malformed caveat");
        let (key, value) = text.split_once('=').ok_or(MALFORMED)?;
        if value.is_empty() || value.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(MALFORMED);
        }
        let number = |v: &str| v.parse::<u64>().map_err(|_| MALFORMED);
        Ok(match key {
            "exp" => Caveat::Exp(number(value)?),
            "nbf" => Caveat::Nbf(number(value)?),
            "aud" => Caveat::Aud(value),
            "scope" => {
                if value.split(',').any(|s| !scope::ALL.contains(&s)) {
                    return Err(MALFORMED);
                }
                Caveat::Scope(value)
            }
            "account" => Caveat::Account(value),
            "account_prefix" => Caveat::AccountPrefix(value),
            "asset" => Caveat::Asset(value),
            "amount_max" => Caveat::AmountMax(value.parse().map_err(|_| MALFORMED)?),
            "route" if value.starts_with('/') => Caveat::Route(value),
            "method" => Caveat::Method(value),
            "ip" => Caveat::Ip(value),
            "rate.rps" => Caveat::RateRps(value.parse().map_err(|_| MALFORMED)?),
            "tenant" => Caveat::Tenant(value),
            "budget.bytes" => Caveat::BudgetBytes(number(value)?),
            SIG_ED25519 | SIG_ML_DSA => Caveat::Signature { alg: key, value },
            "route" => return Err(MALFORMED),
            _ => return Err(TokenError::UnknownCaveat),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    fn claims() -> Claims {
        Claims {
            kid: 3,
            token_id: [9; 16],
            epoch: 1,
            issued_at: 1_700_000_000,
            subject: "alice".into(),
            audience: "ron-node".into(),
        }
    }

    #[test]
    fn mint_encode_decode_verify() {
        let token =
            Token::mint(&KEY, claims(), &["scope=wallet.read,wallet.transfer", "exp=1800000000"])
                .unwrap();
        let text = token.encode();
        assert!(text.starts_with("ron1."));
        let mut scratch = Vec::new();
        let view = decode(text.as_bytes(), 64, &mut scratch).unwrap();
        assert!(view.verify_tag(&KEY));
        assert!(!view.verify_tag(&[8; 32]));
        assert_eq!(view.subject, "alice");
        assert_eq!(view.kid, 3);
        assert_eq!(
            view.caveats().collect::<Vec<_>>(),
            ["scope=wallet.read,wallet.transfer", "exp=1800000000"]
        );
        assert_eq!(view.to_token(), token);
    }

    #[test]
    fn attenuation_needs_no_key_and_cannot_remove() {
        let token = Token::mint(&KEY, claims(), &["scope=wallet.read"]).unwrap();
        let mut narrowed = token.clone();
        narrowed.attenuate("method=GET").unwrap();
        let text = narrowed.encode();
        let mut scratch = Vec::new();
        assert!(decode(text.as_bytes(), 64, &mut scratch).unwrap().verify_tag(&KEY));

        // Dropping the last caveat but keeping the tag must fail.
        let mut forged = narrowed.clone();
        forged.caveats.pop();
        let mut scratch = Vec::new();
        assert!(!decode(forged.encode().as_bytes(), 64, &mut scratch).unwrap().verify_tag(&KEY));
    }

    #[test]
    fn decode_limits() {
        let mut token = Token::mint(&KEY, claims(), &["scope=wallet.read"]).unwrap();
        for i in 1..10 {
            token.attenuate(&format!("exp={}", 1_800_000_000 + i)).unwrap();
        }
        let text = token.encode();
        let mut scratch = Vec::new();
        assert_eq!(decode(text.as_bytes(), 9, &mut scratch).unwrap_err(), TokenError::TooLarge);
        assert!(decode(text.as_bytes(), 10, &mut scratch).is_ok());
        let long = vec![b'A'; TOKEN_TEXT_BYTES_MAX + 1];
        assert_eq!(decode(&long, 64, &mut scratch).unwrap_err(), TokenError::TooLarge);
        assert!(matches!(decode(b"ron2.AAAA", 64, &mut scratch), Err(TokenError::Malformed(_))));
        assert!(matches!(decode(b"ron1.!!!!", 64, &mut scratch), Err(TokenError::Malformed(_))));
        assert_eq!(
            Token::mint(&KEY, claims(), &["scope=wallet.read", "colour=blue"]).unwrap_err(),
            TokenError::UnknownCaveat
        );
        assert!(Token::mint(&KEY, claims(), &["exp=5"]).is_err(), "unscoped tokens are not minted");
        assert!(Token::mint(&KEY, claims(), &["scope=wallet.fly"]).is_err());
        assert!(Token::mint(&KEY, claims(), &["exp=soon"]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(kid in any::<u32>(), id in any::<[u8; 16]>(), epoch in any::<u64>(),
                      subject in "[a-z0-9:]{0,40}", exps in proptest::collection::vec(any::<u64>(), 0..8)) {
            let claims = Claims { kid, token_id: id, epoch, issued_at: 5, subject, audience: "x".into() };
            let caveats: Vec<String> = std::iter::once("scope=index.read".to_owned())
                .chain(exps.iter().map(|e| format!("exp={e}")))
                .collect();
            let refs: Vec<&str> = caveats.iter().map(String::as_str).collect();
            let token = Token::mint(&KEY, claims, &refs).unwrap();
            let text = token.encode();
            let mut scratch = Vec::new();
            let view = decode(text.as_bytes(), 64, &mut scratch).unwrap();
            prop_assert!(view.verify_tag(&KEY));
            prop_assert_eq!(view.to_token(), token);
        }

        #[test]
        fn any_changed_byte_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let token = Token::mint(&KEY, claims(), &["scope=wallet.read", "exp=1800000000", "route=/v1/"]).unwrap();
            let text = token.encode();
            let mut binary = BASE64.decode(&text.as_bytes()[TOKEN_PREFIX.len()..]).unwrap();
            let at = index.index(binary.len());
            binary[at] ^= flip;
            let changed = format!("{TOKEN_PREFIX}{}", BASE64.encode(&binary));
            let mut scratch = Vec::new();
            let accepted = decode(changed.as_bytes(), 64, &mut scratch).is_ok_and(|v| v.verify_tag(&KEY));
            prop_assert!(!accepted, "a token with byte {} changed was accepted", at);
        }

        #[test]
        fn any_changed_character_is_refused(index in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_.=-]") {
            let token = Token::mint(&KEY, claims(), &["scope=wallet.read", "method=GET"]).unwrap();
            let mut text = token.encode().into_bytes();
            let at = index.index(text.len());
            let replacement = replacement.as_bytes()[0];
            prop_assume!(text[at] != replacement);
            text[at] = replacement;
            let mut scratch = Vec::new();
            let accepted = decode(&text, 64, &mut scratch).is_ok_and(|v| v.verify_tag(&KEY));
            prop_assert!(!accepted, "a token with character {} changed was accepted", at);
        }
    }
}
