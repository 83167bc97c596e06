//! The wallet's wire vocabulary (SPEC §5): operations as the log stores
//! them, request validation rules, the canonical request behind a `txid`,
//! and receipts.
//!
//! A wallet operation is one item of a log record body, told apart from a
//! ledger entry by its first byte ([`WALLET_OP_CODE`]). Little-endian:
//!
//! ```text
//! code u8 (0x20) | kind u8 | flags u8 (1 from, 2 to, 4 nonce, 8 hold, 16 timeout, 32 idem)
//! [from_len u16 | from] | [to_len u16 | to] | asset_len u8 | asset | amount u128
//! [nonce u64] | [hold_id [16]] | [timeout_s u32] | [idem_len u8 | idem]
//! txid [16] | ts_ms u64
//! ```

use crate::log::{DecodeError, ITEM_BYTES_MAX, Reader};
pub use compact_str::CompactString;

/// The first byte of a wallet operation in a record body.
pub const WALLET_OP_CODE: u8 = 0x20;
/// Wallet accounts are 1..=this many bytes of `[A-Za-z0-9:/_-]`.
pub const WALLET_ACCOUNT_BYTES_MAX: usize = 256;
/// Asset names, in bytes.
pub const WALLET_ASSET_BYTES_MAX: usize = 32;
/// Idempotency keys are 1..=this many bytes of `[A-Za-z0-9-_:.]`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;
/// Memos, in bytes (validated, not stored: receipts do not carry them).
pub const WALLET_MEMO_BYTES_MAX: usize = 256;
/// The largest encoded operation.
pub const WALLET_OP_BYTES_MAX: usize = 3
    + 2 * (2 + WALLET_ACCOUNT_BYTES_MAX)
    + 1
    + WALLET_ASSET_BYTES_MAX
    + 16
    + 8
    + 16
    + 4
    + 1
    + IDEMPOTENCY_KEY_BYTES_MAX
    + 16
    + 8;
const _: () = assert!(WALLET_OP_BYTES_MAX <= ITEM_BYTES_MAX, "an operation is one log item");

/// A transaction id: the first 16 bytes of BLAKE3 of the canonical request.
pub type TxId = [u8; 16];
/// A hold id (see [`hold_id`]).
pub type HoldId = [u8; 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Issue,
    Transfer,
    Burn,
    Hold,
    Capture,
    Release,
    /// A hold's timeout passed: its funds return to `from`.
    Expire,
}

impl OpKind {
    pub const ALL: [OpKind; 7] = [
        OpKind::Issue,
        OpKind::Transfer,
        OpKind::Burn,
        OpKind::Hold,
        OpKind::Capture,
        OpKind::Release,
        OpKind::Expire,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Issue => "issue",
            OpKind::Transfer => "transfer",
            OpKind::Burn => "burn",
            OpKind::Hold => "hold",
            OpKind::Capture => "capture",
            OpKind::Release => "release",
            OpKind::Expire => "expire",
        }
    }

    const fn code(self) -> u8 {
        match self {
            OpKind::Issue => 1,
            OpKind::Transfer => 2,
            OpKind::Burn => 3,
            OpKind::Hold => 4,
            OpKind::Capture => 5,
            OpKind::Release => 6,
            OpKind::Expire => 7,
        }
    }

    fn from_code(code: u8) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

/// One committed wallet operation. For captures, releases and expiries,
/// `from`, `to`, `asset` and `amount` are the hold's (amount: what moves to
/// `to`; the rest of the hold returns to `from`). Its names are
/// `CompactString`s: short ones (up to 24 bytes) are kept in place, so that
/// making an operation from a request allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletOp {
    pub kind: OpKind,
    pub from: Option<CompactString>,
    pub to: Option<CompactString>,
    pub asset: CompactString,
    pub amount: u128,
    pub nonce: Option<u64>,
    pub hold_id: Option<HoldId>,
    pub timeout_s: Option<u32>,
    /// The idempotency key (none for an expiry).
    pub idem: Option<CompactString>,
    pub txid: TxId,
    pub ts_ms: u64,
}

/// An operation borrowed from its log encoding (`WalletOp::decode_ref`):
/// what applying a committed operation reads, without copies of its
/// strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalletOpRef<'a> {
    pub kind: OpKind,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub asset: &'a str,
    pub amount: u128,
    pub nonce: Option<u64>,
    pub hold_id: Option<HoldId>,
    pub timeout_s: Option<u32>,
    pub idem: Option<&'a str>,
    pub txid: TxId,
    pub ts_ms: u64,
}

impl WalletOpRef<'_> {
    pub fn into_owned(self) -> WalletOp {
        WalletOp {
            kind: self.kind,
            from: self.from.map(CompactString::from),
            to: self.to.map(CompactString::from),
            asset: self.asset.into(),
            amount: self.amount,
            nonce: self.nonce,
            hold_id: self.hold_id,
            timeout_s: self.timeout_s,
            idem: self.idem.map(CompactString::from),
            txid: self.txid,
            ts_ms: self.ts_ms,
        }
    }

    /// Checks the limits the encoding relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        for account in [self.from, self.to].into_iter().flatten() {
            if !valid_account(account) {
                return Err("wallet account");
            }
        }
        if self.asset.is_empty() || self.asset.len() > WALLET_ASSET_BYTES_MAX {
            return Err("wallet asset");
        }
        if self.idem.is_some_and(|k| !valid_idempotency_key(k)) {
            return Err("idempotency key");
        }
        Ok(())
    }
}

/// Whether `account` is a valid wallet account id.
pub fn valid_account(account: &str) -> bool {
    (1..=WALLET_ACCOUNT_BYTES_MAX).contains(&account.len())
        && account.bytes().all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b))
}

/// Whether `key` is a valid idempotency key.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_BYTES_MAX).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
}

/// Whether `memo` is acceptable: at most 256 bytes, no control characters.
pub fn valid_memo(memo: &str) -> bool {
    memo.len() <= WALLET_MEMO_BYTES_MAX && !memo.chars().any(char::is_control)
}

/// The id of the hold created by the request `txid` whose `from` is
/// `from`: the routing hash of `from` (so that a hold id finds the shard of
/// its account under any shard count) followed by 8 bytes of the txid.
pub fn hold_id(from: &str, txid: &TxId) -> HoldId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&crate::routing::route_hash(from.as_bytes()).to_le_bytes());
    id[8..].copy_from_slice(&txid[..8]);
    id
}

/// The routing hash a hold id carries.
pub fn hold_route(hold_id: &HoldId) -> u64 {
    u64::from_le_bytes(hold_id[..8].try_into().expect("8 bytes"))
}

/// Where an idempotency record lives: 16 bytes of BLAKE3 over the key's
/// scope account and the key.
pub fn idempotency_slot(scope: &str, key: &str) -> [u8; 16] {
    // Hashed at once from the stack where the pieces fit (every slot the
    // wallet makes): a `blake3::Hasher` is about 1.9 KB to set up and move.
    const BYTES_MAX: usize = 4 + WALLET_ACCOUNT_BYTES_MAX + IDEMPOTENCY_KEY_BYTES_MAX;
    let len = 4 + scope.len() + key.len();
    let hash = if len <= BYTES_MAX {
        let mut bytes = [0u8; BYTES_MAX];
        bytes[..4].copy_from_slice(&(scope.len() as u32).to_le_bytes());
        bytes[4..4 + scope.len()].copy_from_slice(scope.as_bytes());
        bytes[4 + scope.len()..len].copy_from_slice(key.as_bytes());
        blake3::hash(&bytes[..len])
    } else {
        blake3::hash(
            &[&(scope.len() as u32).to_le_bytes(), scope.as_bytes(), key.as_bytes()].concat(),
        )
    };
    hash.as_bytes()[..16].try_into().expect("16 bytes")
}

/// The txid of the expiry of `hold_id` (one per hold).
pub fn expiry_txid(hold_id: &HoldId) -> TxId {
    let hash = blake3::hash(&[b"expire:".as_slice(), hold_id].concat());
    hash.as_bytes()[..16].try_into().expect("16 bytes")
}

/// The fields of a request that identify it, in a fixed order. Two
/// requests are the same exactly when these are.
#[derive(Clone, Copy, Debug)]
pub struct CanonicalRequest<'a> {
    pub kind: OpKind,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub asset: Option<&'a str>,
    pub amount: Option<u128>,
    pub nonce: Option<u64>,
    pub hold_id: Option<&'a HoldId>,
    pub timeout_s: Option<u32>,
    pub memo: Option<&'a str>,
    /// The account that scopes the idempotency key, and the key.
    pub idem_owner: &'a str,
    pub idem: &'a str,
}

impl CanonicalRequest<'_> {
    /// `field=value` lines, absent fields empty, hashed with BLAKE3.
    pub fn txid(&self) -> TxId {
        // The lines go into one buffer and are hashed at once (one BLAKE3
        // update per piece costs more than the hashing); numbers are
        // written on the stack.
        let mut text = Vec::with_capacity(256);
        let mut line = |name: &str, value: &[&[u8]]| {
            text.extend_from_slice(name.as_bytes());
            text.push(b'=');
            for piece in value {
                text.extend_from_slice(piece);
            }
            text.push(b'\n');
        };
        let mut digits = Digits { buffer: itoa::Buffer::new() };
        line("op", &[self.kind.name().as_bytes()]);
        line("from", &[self.from.unwrap_or("").as_bytes()]);
        line("to", &[self.to.unwrap_or("").as_bytes()]);
        line("asset", &[self.asset.unwrap_or("").as_bytes()]);
        line("amount_minor", &[digits.of(self.amount)]);
        line("nonce", &[digits.of(self.nonce)]);
        let hold_id = self.hold_id.map(hex).unwrap_or_default();
        line("hold_id", &[hold_id.as_bytes()]);
        line("timeout_s", &[digits.of(self.timeout_s)]);
        // A memo may hold any byte but control characters, so it goes last
        // with its length, and cannot run into the next field.
        let memo = self.memo.unwrap_or("");
        line("memo", &[digits.of(Some(memo.len())), b":".as_slice(), memo.as_bytes()]);
        line("idem_owner", &[self.idem_owner.as_bytes()]);
        line("idem", &[self.idem.as_bytes()]);
        let hash = blake3::hash(&text);
        hash.as_bytes()[..16].try_into().expect("16 bytes")
    }
}

/// A number's decimal digits, written into a buffer on the stack (by
/// `itoa`: `write!` through `Display` took 1.4 % of a shard's time).
struct Digits {
    buffer: itoa::Buffer,
}

impl Digits {
    /// The digits of `number`, or nothing for `None`.
    fn of(&mut self, number: Option<impl itoa::Integer>) -> &[u8] {
        number.map_or(&[], |number| self.buffer.format(number).as_bytes())
    }
}

pub fn hex(bytes: &[u8; 16]) -> String {
    crate::merkle::hex(bytes)
}

pub fn from_hex16(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `tx_` + 32 hex.
pub fn txid_text(txid: &TxId) -> String {
    TxidText::of(txid).as_str().to_owned()
}

/// A txid's text (`tx_` and 32 hex digits) in place: an answer listing many
/// txids writes each without allocating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxidText([u8; 35]);

impl TxidText {
    pub fn of(txid: &TxId) -> TxidText {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0; 35];
        text[..3].copy_from_slice(b"tx_");
        for (i, byte) in txid.iter().enumerate() {
            text[3 + 2 * i] = DIGITS[(byte >> 4) as usize];
            text[4 + 2 * i] = DIGITS[(byte & 15) as usize];
        }
        TxidText(text)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl serde::Serialize for TxidText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

pub fn parse_txid(text: &str) -> Option<TxId> {
    from_hex16(text.strip_prefix("tx_")?)
}

/// `h_` + 32 hex.
pub fn hold_id_text(hold_id: &HoldId) -> String {
    format!("h_{}", hex(hold_id))
}

pub fn parse_hold_id(text: &str) -> Option<HoldId> {
    from_hex16(text.strip_prefix("h_")?)
}

impl WalletOp {
    pub fn as_ref(&self) -> WalletOpRef<'_> {
        WalletOpRef {
            kind: self.kind,
            from: self.from.as_deref(),
            to: self.to.as_deref(),
            asset: &self.asset,
            amount: self.amount,
            nonce: self.nonce,
            hold_id: self.hold_id,
            timeout_s: self.timeout_s,
            idem: self.idem.as_deref(),
            txid: self.txid,
            ts_ms: self.ts_ms,
        }
    }

    /// Checks the limits the encoding relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        self.as_ref().check()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.check().is_ok(), "operations are checked before they are encoded");
        let start = out.len();
        let flags = u8::from(self.from.is_some())
            | u8::from(self.to.is_some()) << 1
            | u8::from(self.nonce.is_some()) << 2
            | u8::from(self.hold_id.is_some()) << 3
            | u8::from(self.timeout_s.is_some()) << 4
            | u8::from(self.idem.is_some()) << 5;
        out.extend_from_slice(&[WALLET_OP_CODE, self.kind.code(), flags]);
        for account in [&self.from, &self.to].into_iter().flatten() {
            out.extend_from_slice(&(account.len() as u16).to_le_bytes());
            out.extend_from_slice(account.as_bytes());
        }
        out.push(self.asset.len() as u8);
        out.extend_from_slice(self.asset.as_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        if let Some(nonce) = self.nonce {
            out.extend_from_slice(&nonce.to_le_bytes());
        }
        if let Some(hold_id) = &self.hold_id {
            out.extend_from_slice(hold_id);
        }
        if let Some(timeout) = self.timeout_s {
            out.extend_from_slice(&timeout.to_le_bytes());
        }
        if let Some(idem) = &self.idem {
            out.push(idem.len() as u8);
            out.extend_from_slice(idem.as_bytes());
        }
        out.extend_from_slice(&self.txid);
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        assert!(out.len() - start <= WALLET_OP_BYTES_MAX);
    }

    /// Decodes exactly one operation.
    pub fn decode(bytes: &[u8]) -> Result<WalletOp, DecodeError> {
        WalletOp::decode_ref(bytes).map(WalletOpRef::into_owned)
    }

    /// The same, borrowed from `bytes`.
    pub fn decode_ref<'a>(bytes: &'a [u8]) -> Result<WalletOpRef<'a>, DecodeError> {
        if bytes.len() > WALLET_OP_BYTES_MAX {
            return Err(DecodeError::Invalid("wallet operation too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        if reader.u8()? != WALLET_OP_CODE {
            return Err(DecodeError::Invalid("not a wallet operation"));
        }
        let kind = OpKind::from_code(reader.u8()?).ok_or(DecodeError::Invalid("wallet op kind"))?;
        let flags = reader.u8()?;
        if flags & !0b11_1111 != 0 {
            return Err(DecodeError::Invalid("wallet op flags"));
        }
        let account = |reader: &mut Reader<'a>| -> Result<&'a str, DecodeError> {
            let len = u16::from_le_bytes(reader.array()?) as usize;
            if len == 0 || len > WALLET_ACCOUNT_BYTES_MAX {
                return Err(DecodeError::Invalid("wallet account"));
            }
            reader.str(len, "wallet account")
        };
        let from = if flags & 1 != 0 { Some(account(&mut reader)?) } else { None };
        let to = if flags & 2 != 0 { Some(account(&mut reader)?) } else { None };
        let asset = reader.text_ref(WALLET_ASSET_BYTES_MAX, "wallet asset")?;
        let amount = u128::from_le_bytes(reader.array()?);
        let nonce = if flags & 4 != 0 { Some(u64::from_le_bytes(reader.array()?)) } else { None };
        let hold_id = if flags & 8 != 0 { Some(reader.array()?) } else { None };
        let timeout_s =
            if flags & 16 != 0 { Some(u32::from_le_bytes(reader.array()?)) } else { None };
        let idem = if flags & 32 != 0 {
            Some(reader.text_ref(IDEMPOTENCY_KEY_BYTES_MAX, "idempotency key")?)
        } else {
            None
        };
        let txid = reader.array()?;
        let ts_ms = u64::from_le_bytes(reader.array()?);
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the wallet operation"));
        }
        let op = WalletOpRef {
            kind,
            from,
            to,
            asset,
            amount,
            nonce,
            hold_id,
            timeout_s,
            idem,
            txid,
            ts_ms,
        };
        op.check().map_err(DecodeError::Invalid)?;
        Ok(op)
    }
}

/// Where a committed operation went in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub seq: u64,
    pub root: [u8; 32],
}

/// What the original svc-wallet's receipts say of every committed write:
/// the wallet and ledger accepted it (stronger labels are settlement
/// states of a chain this node does not run).
pub const SETTLEMENT_STATUS: &str = "accepted";

/// The receipt of a committed operation (SPEC §5), as JSON with the
/// original svc-wallet's fields in its order: `from`, `to` and `nonce` are
/// `null` where they do not apply, and `receipt_hash` is `b3:` + BLAKE3 of
/// the receipt up to and including `settlement_status` (the bytes its
/// `serde_json` preimage has), so its clients check it unchanged. A hold's
/// id follows, outside the hash (the txid covers it). Every string in it is
/// an account, asset, idempotency key or hex, none of which needs escaping.
pub fn receipt(op: &WalletOp, placement: &Placement) -> Vec<u8> {
    use std::fmt::Write as _;
    fn text_or_null(value: Option<&str>) -> String {
        value.map_or_else(|| "null".to_owned(), |v| format!("\"{v}\""))
    }
    let mut text = String::with_capacity(512);
    let _ = write!(
        text,
        "{{\"txid\":\"{}\",\"op\":\"{}\",\"from\":{},\"to\":{},\"asset\":\"{}\",\"amount_minor\":\"{}\",\"nonce\":{}",
        txid_text(&op.txid),
        op.kind.name(),
        text_or_null(op.from.as_deref()),
        text_or_null(op.to.as_deref()),
        op.asset,
        op.amount,
        op.nonce.map_or_else(|| "null".to_owned(), |n| n.to_string()),
    );
    let _ = write!(
        text,
        ",\"idem\":\"{}\",\"ts\":{},\"ledger_seq_start\":{},\"ledger_seq_end\":{},\"ledger_root\":\"{}\",\"settlement_status\":\"{SETTLEMENT_STATUS}\"",
        op.idem.as_deref().unwrap_or(""),
        op.ts_ms,
        placement.seq,
        placement.seq,
        crate::merkle::hex(&placement.root),
    );
    let hash = blake3::hash(format!("{text}}}").as_bytes());
    if let Some(hold_id) = &op.hold_id {
        let _ = write!(text, ",\"hold_id\":\"{}\"", hold_id_text(hold_id));
    }
    let _ = write!(text, ",\"receipt_hash\":\"b3:{}\"}}", hash.to_hex());
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> WalletOp {
        WalletOp {
            kind: OpKind::Transfer,
            from: Some("alice".into()),
            to: Some("bob".into()),
            asset: "roc".into(),
            amount: 5,
            nonce: Some(1),
            hold_id: None,
            timeout_s: None,
            idem: Some("k-1".into()),
            txid: [3; 16],
            ts_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn receipts_are_fixed_and_hash_themselves() {
        let placement = Placement { seq: 7, root: [0xab; 32] };
        let receipt = String::from_utf8(receipt(&op(), &placement)).unwrap();
        let (body, hash) = receipt.split_once(",\"receipt_hash\":\"b3:").unwrap();
        let expected = blake3::hash(format!("{body}}}").as_bytes()).to_hex().to_string();
        assert_eq!(hash, format!("{expected}\"}}"));
        let json: simd_json::OwnedValue =
            simd_json::to_owned_value(&mut receipt.clone().into_bytes()).unwrap();
        use simd_json::prelude::*;
        assert_eq!(json.get_str("txid"), Some("tx_03030303030303030303030303030303"));
        assert_eq!(json.get_u64("ledger_seq_start"), Some(7));
        assert_eq!(json.get_str("amount_minor"), Some("5"));
        assert_eq!(json.get_str("settlement_status"), Some("accepted"));
    }

    /// The original's preimage is its receipt's fields through
    /// `settlement_status`, `from`/`to`/`nonce` null where absent, and a
    /// hold's id is outside it.
    #[test]
    fn receipts_carry_null_fields_and_hash_like_the_original() {
        let placement = Placement { seq: 9, root: [0x01; 32] };
        let issue = WalletOp { kind: OpKind::Issue, from: None, nonce: None, ..op() };
        let text = String::from_utf8(receipt(&issue, &placement)).unwrap();
        let root = "01".repeat(32);
        let preimage = format!(
            r#"{{"txid":"tx_03030303030303030303030303030303","op":"issue","from":null,"to":"bob","asset":"roc","amount_minor":"5","nonce":null,"idem":"k-1","ts":1700000000000,"ledger_seq_start":9,"ledger_seq_end":9,"ledger_root":"{root}","settlement_status":"accepted"}}"#
        );
        let hash = blake3::hash(preimage.as_bytes()).to_hex();
        let expected =
            format!("{},\"receipt_hash\":\"b3:{hash}\"}}", &preimage[..preimage.len() - 1]);
        assert_eq!(text, expected);

        let hold = WalletOp { kind: OpKind::Hold, hold_id: Some([7; 16]), ..op() };
        let text = String::from_utf8(receipt(&hold, &placement)).unwrap();
        let (body, rest) = text.split_once(",\"hold_id\":\"h_07").unwrap();
        assert!(body.ends_with("\"settlement_status\":\"accepted\""), "{text}");
        let hash = blake3::hash(format!("{body}}}").as_bytes()).to_hex();
        assert!(rest.ends_with(&format!(",\"receipt_hash\":\"b3:{hash}\"}}")), "{text}");
    }

    #[test]
    fn an_idempotency_slot_is_blake3_of_the_scope_length_scope_and_key() {
        // Views keep records by slot: the formula cannot change unnoticed.
        let (long_scope, long_key) = ("a".repeat(300), "k".repeat(100));
        for (scope, key) in [("alice", "k1"), ("", ""), (&*long_scope, &*long_key)] {
            let bytes = [&(scope.len() as u32).to_le_bytes(), scope.as_bytes(), key.as_bytes()];
            let expected: [u8; 16] =
                blake3::hash(&bytes.concat()).as_bytes()[..16].try_into().unwrap();
            assert_eq!(idempotency_slot(scope, key), expected);
        }
        // The scope's length keeps a key from shifting into it.
        assert_ne!(idempotency_slot("ab", "c"), idempotency_slot("a", "bc"));
    }

    #[test]
    fn txids_differ_with_any_field_and_memos_cannot_shift_fields() {
        let base = CanonicalRequest {
            kind: OpKind::Transfer,
            from: Some("a"),
            to: Some("b"),
            asset: Some("roc"),
            amount: Some(5),
            nonce: Some(1),
            hold_id: None,
            timeout_s: None,
            memo: Some("x"),
            idem_owner: "a",
            idem: "k",
        };
        let id = base.txid();
        assert_ne!(CanonicalRequest { amount: Some(6), ..base }.txid(), id);
        assert_ne!(CanonicalRequest { memo: Some("y"), ..base }.txid(), id);
        assert_ne!(CanonicalRequest { idem: "k2", ..base }.txid(), id);
        assert_ne!(CanonicalRequest { memo: None, ..base }.txid(), id);
        assert_eq!(parse_txid(&txid_text(&id)), Some(id));
        let text = txid_text(&[0xab; 16]);
        assert_eq!(text, format!("tx_{}", "ab".repeat(16)));
        assert_eq!(
            simd_json::to_string(&TxidText::of(&[0xab; 16])).unwrap(),
            format!("\"{text}\"")
        );
    }

    #[test]
    fn a_txid_is_blake3_over_the_documented_lines() {
        let request = CanonicalRequest {
            kind: OpKind::Capture,
            from: Some("alice"),
            to: None,
            asset: Some("roc"),
            amount: Some(u128::MAX),
            nonce: Some(42),
            hold_id: Some(&[0xab; 16]),
            timeout_s: Some(30),
            memo: Some("rent: june"),
            idem_owner: "alice",
            idem: "k-1",
        };
        let lines = format!(
            "op=capture\nfrom=alice\nto=\nasset=roc\namount_minor={}\nnonce=42\nhold_id={}\n\
             timeout_s=30\nmemo=10:rent: june\nidem_owner=alice\nidem=k-1\n",
            u128::MAX,
            "ab".repeat(16),
        );
        let expected: TxId = blake3::hash(lines.as_bytes()).as_bytes()[..16].try_into().unwrap();
        assert_eq!(request.txid(), expected);
        let bare = CanonicalRequest {
            kind: OpKind::Issue,
            from: None,
            to: Some("bob"),
            asset: Some("roc"),
            amount: Some(7),
            nonce: None,
            hold_id: None,
            timeout_s: None,
            memo: None,
            idem_owner: "bob",
            idem: "i",
        };
        let lines = "op=issue\nfrom=\nto=bob\nasset=roc\namount_minor=7\nnonce=\nhold_id=\n\
                     timeout_s=\nmemo=0:\nidem_owner=bob\nidem=i\n";
        let expected: TxId = blake3::hash(lines.as_bytes()).as_bytes()[..16].try_into().unwrap();
        assert_eq!(bare.txid(), expected);
    }

    #[test]
    fn hold_ids_route_like_their_account() {
        let id = hold_id("alice", &[9; 16]);
        for shards in 1..8 {
            assert_eq!(
                crate::routing::owner_of_route(hold_route(&id), shards),
                crate::routing::owner(b"alice", shards)
            );
        }
        assert_eq!(parse_hold_id(&hold_id_text(&id)), Some(id));
    }

    #[test]
    fn validation_rules() {
        assert!(valid_account("acct:1/a_b-C"));
        assert!(!valid_account("a b") && !valid_account("") && !valid_account(&"a".repeat(257)));
        assert!(valid_account(&"a".repeat(256)));
        assert!(valid_idempotency_key("k-1_2:3.4") && !valid_idempotency_key("k/1"));
        assert!(!valid_idempotency_key(&"k".repeat(65)));
        assert!(valid_memo("hello ü") && !valid_memo("a\nb") && !valid_memo(&"m".repeat(257)));
    }

    proptest! {
        #[test]
        fn operations_round_trip(
            kind in 0usize..7,
            from in proptest::option::of("[a-z0-9:/_-]{1,256}"),
            to in proptest::option::of("[a-z0-9:/_-]{1,256}"),
            asset in "[a-z]{1,32}",
            amount in any::<u128>(),
            nonce in proptest::option::of(any::<u64>()),
            hold_id in proptest::option::of(any::<[u8; 16]>()),
            timeout_s in proptest::option::of(any::<u32>()),
            idem in proptest::option::of("[a-z0-9.:_-]{1,64}"),
            txid in any::<[u8; 16]>(),
            ts_ms in any::<u64>(),
        ) {
            let (from, to, idem) = (from.map(Into::into), to.map(Into::into), idem.map(Into::into));
            let op = WalletOp { kind: OpKind::ALL[kind], from, to, asset: asset.into(), amount, nonce, hold_id, timeout_s, idem, txid, ts_ms };
            let mut bytes = Vec::new();
            op.encode(&mut bytes);
            prop_assert_eq!(WalletOp::decode(&bytes).unwrap(), op);
            // Every cut is refused, never a panic.
            for cut in 0..bytes.len() {
                prop_assert!(WalletOp::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
