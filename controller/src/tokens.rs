//! Bootstrap tokens: one-time secrets that let a DPU enroll as one node.
//!
//! A token reads `dpub.<16 hex id>.<64 hex secret>`. The store keeps
//! `tokens/<id>`: the token's node, expiry and the SHA-256 of its secret,
//! never the secret, and `used_unix` once an enrollment consumed it.
//!
//! An enrollment consumes its token in the same store transaction that records
//! the node's certificate (`enroll::Enroller::enroll`), on the condition that
//! the token's key is still the one the check read: of concurrent enrollments
//! with one token exactly one lands, and there is no state in between for a
//! crash to leave behind. A refused request writes nothing.
//!
//! Controllers before the store kept one file per token under
//! `<state-dir>/tokens/`; [`import_files`] moves them into the store once.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kv::{Cmp, KvError, Revision, Store, Txn};
use crate::timeutil::rfc3339;

/// Where token records live in the store: `tokens/<id>`.
pub const PREFIX: &str = "tokens/";

pub const TOKEN_PREFIX: &str = "dpub";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// The lifetime of a token unless `--ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// A token as the operator hands it to a DPU. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.id, hex::encode(self.secret))
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `id` can be a token id (and so a key under `tokens/`).
pub fn valid_id(id: &str) -> bool {
    is_lower_hex(id, 2 * ID_BYTES)
}

impl Token {
    pub fn generate() -> Token {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        Token {
            id: hex::encode(id),
            secret,
        }
    }

    pub fn parse(text: &str) -> Result<Token, TokenRefusal> {
        let mut parts = text.split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenRefusal::Malformed);
        };
        if !valid_id(id) || !is_lower_hex(secret, 2 * SECRET_BYTES) {
            return Err(TokenRefusal::Malformed);
        }
        let mut bytes = [0u8; SECRET_BYTES];
        hex::decode_to_slice(secret, &mut bytes).map_err(|_| TokenRefusal::Malformed)?;
        Ok(Token {
            id: id.to_string(),
            secret: bytes,
        })
    }

    fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }

    /// Whether `stored` (hex) is the SHA-256 of this token's secret. The digests
    /// are compared in constant time.
    fn matches(&self, stored: &str) -> bool {
        let mut want = [0u8; 32];
        if hex::decode_to_slice(stored, &mut want).is_err() {
            return false;
        }
        let got = self.secret_sha256();
        let diff = got
            .iter()
            .zip(want.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// `tokens/<id>`: what the controller keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub node: String,
    /// Hex SHA-256 of the secret's 32 bytes.
    pub secret_sha256: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    /// When an enrollment consumed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_unix: Option<i64>,
}

impl TokenRecord {
    pub fn state(&self, now: i64) -> TokenState {
        if self.used_unix.is_some() {
            TokenState::Used
        } else if self.expires_unix <= now {
            TokenState::Expired
        } else {
            TokenState::Unused
        }
    }

    /// The record's value in the store.
    pub fn stored(&self) -> String {
        serde_json::to_string(self).expect("a token record serializes")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Unused,
    Used,
    Expired,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Unused => "unused",
            TokenState::Used => "used",
            TokenState::Expired => "expired",
        }
    }
}

/// Why a token does not admit a request. The messages are logged; the DPU gets
/// them too, except that `Unknown` and `WrongSecret` read the same to it
/// (`enroll::EnrollError::status`), so that it cannot tell which ids exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("malformed token (expected {TOKEN_PREFIX}.<16 hex id>.<64 hex secret>)")]
    Malformed,
    #[error("unknown token {id}")]
    Unknown { id: String },
    #[error("wrong secret for token {id}")]
    WrongSecret { id: String },
    #[error("token {id} expired at {at}")]
    Expired { id: String, at: String },
    #[error("token {id} was already used")]
    Used { id: String },
    #[error("token {id} is for node {token_node:?}, not {node:?}")]
    OtherNode {
        id: String,
        token_node: String,
        node: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token does not admit the request.
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    /// The store could not be read or written.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A key under `tokens/` is not a token record.
    #[error("store key {key}: not a token record: {message}")]
    Corrupt { key: String, message: String },
    /// A token file of an older controller could not be read.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The node name is not acceptable.
    #[error("invalid node name {name:?}: {message}")]
    BadName { name: String, message: String },
    /// `token delete` of an id the store does not have.
    #[error("no token {0}")]
    NoSuchToken(String),
}

/// The token records in the store.
#[derive(Debug, Clone)]
pub struct TokenStore {
    store: Store,
}

pub fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn parse(key: &str, value: &str) -> Result<TokenRecord, TokenError> {
    let r: TokenRecord = serde_json::from_str(value).map_err(|e| TokenError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    if PREFIX.to_string() + &r.id != key {
        return Err(TokenError::Corrupt {
            key: key.to_string(),
            message: format!("the record is for token {:?}", r.id),
        });
    }
    Ok(r)
}

impl TokenStore {
    pub fn new(store: Store) -> Self {
        TokenStore { store }
    }

    /// A new token for `node`, valid for `ttl` from `now`. The record is written
    /// before the token is returned; the secret exists only in the return value.
    pub async fn create(
        &self,
        node: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<(Token, TokenRecord), TokenError> {
        dpu_model::check_name(node).map_err(|message| TokenError::BadName {
            name: node.to_string(),
            message,
        })?;
        loop {
            let token = Token::generate();
            let record = TokenRecord {
                id: token.id.clone(),
                node: node.to_string(),
                secret_sha256: hex::encode(token.secret_sha256()),
                created_unix: now,
                expires_unix: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
                used_unix: None,
            };
            let k = key(&token.id);
            let done = self
                .store
                .txn(
                    Txn::new()
                        .when(Cmp::CreateRevision(k.clone(), 0))
                        .put(k, record.stored()),
                )
                .await?;
            // Otherwise the id exists already (2^-64): another one.
            if done.succeeded {
                return Ok((token, record));
            }
        }
    }

    /// Every token record, with its state at `now`, oldest first.
    pub async fn list(&self, now: i64) -> Result<Vec<(TokenRecord, TokenState)>, TokenError> {
        let listing = self.store.list(PREFIX).await?;
        let mut out = Vec::new();
        for e in &listing.entries {
            let r = parse(&e.key, &e.value)?;
            let state = r.state(now);
            out.push((r, state));
        }
        out.sort_by(|a, b| (a.0.created_unix, &a.0.id).cmp(&(b.0.created_unix, &b.0.id)));
        Ok(out)
    }

    /// Removes a token's record, used or not.
    pub async fn delete(&self, id: &str) -> Result<(), TokenError> {
        if !valid_id(id) {
            return Err(TokenError::NoSuchToken(id.to_string()));
        }
        let k = key(id);
        let (_, entry) = self.store.get(&k).await?;
        let Some(entry) = entry else {
            return Err(TokenError::NoSuchToken(id.to_string()));
        };
        let done = self
            .store
            .txn(
                Txn::new()
                    .when(Cmp::CreateRevision(k.clone(), entry.create_revision))
                    .delete(k),
            )
            .await?;
        if !done.succeeded {
            // Deleted (or deleted and made again, 2^-64) meanwhile.
            return Err(TokenError::NoSuchToken(id.to_string()));
        }
        Ok(())
    }

    /// Checks that `token` lets a DPU enroll as `node` at `now`. Changes
    /// nothing. Returns the record and the revision it was read at: the
    /// enrollment that consumes the token holds only while the key is
    /// unchanged since.
    pub async fn check(
        &self,
        token: &Token,
        node: &str,
        now: i64,
    ) -> Result<(TokenRecord, Revision), TokenError> {
        let id = token.id.clone();
        let k = key(&id);
        let (_, entry) = self.store.get(&k).await?;
        let Some(entry) = entry else {
            // The same work as for a wrong secret.
            std::hint::black_box(token.matches(UNKNOWN_SHA256));
            return Err(TokenRefusal::Unknown { id }.into());
        };
        let record = parse(&k, &entry.value)?;
        // The secret first: without it, nothing about the token is told.
        if !token.matches(&record.secret_sha256) {
            return Err(TokenRefusal::WrongSecret { id }.into());
        }
        if record.used_unix.is_some() {
            return Err(TokenRefusal::Used { id }.into());
        }
        if record.expires_unix <= now {
            let at = rfc3339(record.expires_unix);
            return Err(TokenRefusal::Expired { id, at }.into());
        }
        if record.node != node {
            return Err(TokenRefusal::OtherNode {
                id,
                token_node: record.node,
                node: node.to_string(),
            }
            .into());
        }
        Ok((record, entry.mod_revision))
    }

    /// The comparison and write that consume a token checked at `revision`,
    /// for the enrollment's transaction.
    pub fn consume(record: &TokenRecord, revision: Revision, now: i64) -> (Cmp, String, String) {
        let mut used = record.clone();
        used.used_unix = Some(now);
        let k = key(&record.id);
        (Cmp::ModRevision(k.clone(), revision), k, used.stored())
    }

    /// Whether token `id` is still as it was at `revision` (an enrollment's
    /// transaction failed: was it the token or the node record that changed?).
    pub async fn unchanged_since(&self, id: &str, revision: Revision) -> Result<bool, TokenError> {
        let (_, entry) = self.store.get(&key(id)).await?;
        Ok(entry.is_some_and(|e| e.mod_revision == revision))
    }
}

/// What an unknown id's secret is compared with (no secret has this digest).
const UNKNOWN_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Token files of a controller from before the store: `tokens/<id>.json`
/// (unused), `tokens/claimed/` (an enrollment cut short by a crash),
/// `tokens/used/`. Each record becomes `tokens/<id>` unless the store has that
/// id already. A claimed token is used if `enrolled_with(node)` names it (its
/// certificate was recorded), else unused, as the old controller settled it.
pub fn read_files(
    state_dir: &Path,
    enrolled_with: impl Fn(&str) -> Option<String>,
) -> Result<Vec<TokenRecord>, TokenError> {
    let dir = state_dir.join("tokens");
    let mut out = Vec::new();
    for (sub, used) in [("", false), ("claimed", false), ("used", true)] {
        let d = dir.join(sub);
        for path in json_files(&d)? {
            let bytes = fs::read(&path).map_err(|e| file_err(&path, e))?;
            let mut r: TokenRecord =
                serde_json::from_slice(&bytes).map_err(|e| TokenError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let settled_used =
                sub == "claimed" && enrolled_with(&r.node).as_deref() == Some(r.id.as_str());
            if (used || settled_used) && r.used_unix.is_none() {
                r.used_unix = Some(r.created_unix);
            }
            if !valid_id(&r.id) || path.file_stem().and_then(|s| s.to_str()) != Some(&r.id) {
                return Err(TokenError::File {
                    path,
                    message: format!("the record is for token {:?}", r.id),
                });
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn file_err(path: &Path, e: io::Error) -> TokenError {
    TokenError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `<id>.json` files directly in `dir` (none if `dir` does not exist).
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, TokenError> {
    crate::fsutil::json_files(dir, valid_id).map_err(|(path, e)| file_err(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn token_text_round_trips_and_malformed_ones_are_refused() {
        let t = Token::generate();
        let text = t.to_string();
        assert_eq!(text.len(), 4 + 1 + 16 + 1 + 64);
        assert_eq!(Token::parse(&text).unwrap(), t);
        assert!(
            !format!("{t:?}").contains(&text[22..]),
            "Debug hides the secret"
        );
        let id = &text[5..21];
        let secret = &text[22..];
        for bad in [
            String::new(),
            format!("dpux.{id}.{secret}"),
            format!("dpub.{id}"),
            format!("dpub.{id}.{secret}.x"),
            format!("dpub.{}.{secret}", &id[1..]),
            format!("dpub.{id}.{}", secret.to_uppercase()),
            format!("dpub.{id}.{}g", &secret[1..]),
            format!("dpub.../..{}", &secret[4..]),
        ] {
            assert_eq!(Token::parse(&bad), Err(TokenRefusal::Malformed), "{bad:?}");
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::kv::LocalStore::open(&dir.path().join("store")).unwrap();
        (dir, Store::Local(s))
    }

    #[tokio::test]
    async fn check_refuses_without_changing_anything_and_a_token_is_consumed_once() {
        let (_dir, kv) = store();
        let store = TokenStore::new(kv.clone());
        let now = 1_000_000;
        let (t, rec) = store.create("dpu-1", HOUR, now).await.unwrap();
        let stored = kv.get(&key(&t.id)).await.unwrap().1.unwrap();
        assert!(
            !stored.value.contains(&hex::encode(t.secret)),
            "no secret in the store"
        );
        assert_eq!(parse(&stored.key, &stored.value).unwrap(), rec);

        let refusal = |r: Result<(TokenRecord, Revision), TokenError>| match r {
            Err(TokenError::Refused(r)) => r.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            store.check(&t, "dpu-1", now).await.unwrap(),
            (rec.clone(), stored.mod_revision)
        );
        let mut wrong = t.clone();
        wrong.secret[0] ^= 1;
        assert_eq!(
            refusal(store.check(&wrong, "dpu-1", now).await),
            format!("wrong secret for token {}", t.id)
        );
        assert_eq!(
            refusal(store.check(&t, "dpu-2", now).await),
            format!("token {} is for node \"dpu-1\", not \"dpu-2\"", t.id)
        );
        assert!(refusal(store.check(&t, "dpu-1", now + 3600).await).contains("expired at"));
        let other = Token::generate();
        assert_eq!(
            refusal(store.check(&other, "dpu-1", now).await),
            format!("unknown token {}", other.id)
        );
        let after = kv.get(&key(&t.id)).await.unwrap().1.unwrap();
        assert_eq!(after, stored, "unchanged");
        assert_eq!(store.list(now).await.unwrap()[0].1, TokenState::Unused);
        assert_eq!(
            store.list(now + 3600).await.unwrap()[0].1,
            TokenState::Expired
        );

        // Consuming holds only once: a second transaction from the same check
        // finds the key changed.
        let consume = |rev| {
            let (cmp, k, v) = TokenStore::consume(&rec, rev, now + 5);
            Txn::new().when(cmp).put(k, v)
        };
        assert!(
            kv.txn(consume(stored.mod_revision))
                .await
                .unwrap()
                .succeeded
        );
        assert!(
            !kv.txn(consume(stored.mod_revision))
                .await
                .unwrap()
                .succeeded
        );
        assert!(!store
            .unchanged_since(&t.id, stored.mod_revision)
            .await
            .unwrap());
        let used = format!("token {} was already used", t.id);
        assert_eq!(refusal(store.check(&t, "dpu-1", now).await), used);
        let list = store.list(now).await.unwrap();
        assert_eq!(list[0].1, TokenState::Used);
        assert_eq!(list[0].0.used_unix, Some(now + 5));

        store.delete(&t.id).await.unwrap();
        assert!(matches!(
            store.delete(&t.id).await,
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(matches!(
            store.delete("../x").await,
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(matches!(
            store.create("Bad_Name", HOUR, now).await,
            Err(TokenError::BadName { .. })
        ));
        // A value that is not a record is named by its key.
        kv.txn(Txn::new().put(key(&other.id), "{}")).await.unwrap();
        let e = store.list(now).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "store key tokens/{}: not a token record",
                other.id
            )),
            "{e}"
        );
    }

    /// The files of a controller from before the store, claimed ones settled
    /// the way it settled them.
    #[test]
    fn old_token_files_are_read_and_claimed_ones_settled() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |id: &str, node: &str| TokenRecord {
            id: id.into(),
            node: node.into(),
            secret_sha256: "00".repeat(32),
            created_unix: 10,
            expires_unix: 20,
            used_unix: None,
        };
        let write = |sub: &str, r: &TokenRecord| {
            let d = dir.path().join("tokens").join(sub);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("{}.json", r.id)), r.stored()).unwrap();
        };
        write("", &rec("00000000000000aa", "n1"));
        write("claimed", &rec("00000000000000bb", "n2"));
        write("claimed", &rec("00000000000000cc", "n3"));
        write("used", &rec("00000000000000dd", "n4"));
        let got = read_files(dir.path(), |node| {
            (node == "n2").then(|| "00000000000000bb".to_string())
        })
        .unwrap();
        let states: Vec<(String, TokenState)> =
            got.iter().map(|r| (r.id.clone(), r.state(0))).collect();
        assert_eq!(
            states,
            [
                ("00000000000000aa".to_string(), TokenState::Unused),
                ("00000000000000bb".to_string(), TokenState::Used),
                ("00000000000000cc".to_string(), TokenState::Unused),
                ("00000000000000dd".to_string(), TokenState::Used),
            ]
        );
        assert_eq!(read_files(&dir.path().join("none"), |_| None).unwrap(), []);
    }
}
