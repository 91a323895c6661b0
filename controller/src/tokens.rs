//! Bootstrap tokens: one-time secrets that let a DPU enroll as one node.
//!
//! A token reads `dpub.<16 hex id>.<64 hex secret>`. `<state-dir>/tokens/<id>.json`
//! holds an unused token's node, expiry and the SHA-256 of its secret, never the
//! secret. A refused request leaves the file where it was.
//!
//! Every change of an enrolling token's state is one `rename(2)` of its record,
//! which is atomic and needs no free space, so a full disk cannot strand it:
//!
//! - `claim`: `tokens/<id>.json` → `tokens/claimed/<id>.json`. Of concurrent
//!   enrollments with one token exactly one wins; a claimed token admits no one.
//! - `restore` (the certificate could not be issued or recorded): back to
//!   `tokens/<id>.json`, unchanged, so the token is usable again.
//! - `finish` (the certificate is recorded in the node's record):
//!   `tokens/claimed/<id>.json` → `tokens/used/<id>.json`; only then is
//!   `used_unix` added, best effort.
//!
//! After a crash between `claim` and `restore`/`finish`, the token stays
//! claimed, so it is never usable twice; the server settles it at its next
//! start (`Enroller::new`): used if the node record names it, else unused.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{ensure_private_dir, write_atomic, SECRET_MODE};
use crate::timeutil::rfc3339;

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

/// Whether `id` can be a token id (and so a file name under `tokens/`).
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

/// `tokens/<id>.json`: what the controller keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub node: String,
    /// Hex SHA-256 of the secret's 32 bytes.
    pub secret_sha256: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    /// When an enrollment consumed it (records under `tokens/used/` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_unix: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Unused,
    /// An enrollment with it is under way, or was cut short by a crash (the
    /// server settles it when it starts). It admits no one.
    Claimed,
    Used,
    Expired,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Unused => "unused",
            TokenState::Claimed => "claimed",
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
    /// A token file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A token file is not a token record.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The node name is not acceptable.
    #[error("invalid node name {name:?}: {message}")]
    BadName { name: String, message: String },
    /// `token delete` of an id that has no file.
    #[error("no token {0}")]
    NoSuchToken(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The token files of a state directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
    used: PathBuf,
    claimed: PathBuf,
}

impl TokenStore {
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join("tokens");
        TokenStore {
            used: dir.join("used"),
            claimed: dir.join("claimed"),
            dir,
        }
    }

    fn unused_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn used_path(&self, id: &str) -> PathBuf {
        self.used.join(format!("{id}.json"))
    }

    fn claimed_path(&self, id: &str) -> PathBuf {
        self.claimed.join(format!("{id}.json"))
    }

    /// Where a token's record may be, in the order `check` looks.
    fn paths(&self, id: &str) -> [(PathBuf, TokenState); 3] {
        [
            (self.unused_path(id), TokenState::Unused),
            (self.claimed_path(id), TokenState::Claimed),
            (self.used_path(id), TokenState::Used),
        ]
    }

    /// A new token for `node`, valid for `ttl` from `now`. The record is written
    /// before the token is returned; the secret exists only in the return value.
    pub fn create(
        &self,
        node: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<(Token, TokenRecord), TokenError> {
        dpu_model::check_name(node).map_err(|message| TokenError::BadName {
            name: node.to_string(),
            message,
        })?;
        for d in [&self.dir, &self.used] {
            ensure_private_dir(d).map_err(io_err(d))?;
        }
        let token = loop {
            let t = Token::generate();
            if self.paths(&t.id).iter().all(|(p, _)| !p.exists()) {
                break t;
            }
        };
        let record = TokenRecord {
            id: token.id.clone(),
            node: node.to_string(),
            secret_sha256: hex::encode(token.secret_sha256()),
            created_unix: now,
            expires_unix: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            used_unix: None,
        };
        write_record(&self.unused_path(&token.id), &record)?;
        Ok((token, record))
    }

    /// Every token record, by id, with its state at `now`.
    pub fn list(&self, now: i64) -> Result<Vec<(TokenRecord, TokenState)>, TokenError> {
        let mut out = Vec::new();
        for (dir, state) in [
            (&self.dir, TokenState::Unused),
            (&self.claimed, TokenState::Claimed),
            (&self.used, TokenState::Used),
        ] {
            for path in json_files(dir)? {
                let r = read_record(&path)?;
                let state = if state == TokenState::Unused && r.expires_unix <= now {
                    TokenState::Expired
                } else {
                    state
                };
                out.push((r, state));
            }
        }
        out.sort_by(|a, b| (a.0.created_unix, &a.0.id).cmp(&(b.0.created_unix, &b.0.id)));
        Ok(out)
    }

    /// Removes a token's record, used or not.
    pub fn delete(&self, id: &str) -> Result<(), TokenError> {
        if !valid_id(id) {
            return Err(TokenError::NoSuchToken(id.to_string()));
        }
        for (path, _) in self.paths(id) {
            match fs::remove_file(&path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(TokenError::NoSuchToken(id.to_string()))
    }

    /// Checks that `token` lets a DPU enroll as `node` at `now`. Changes nothing.
    pub fn check(&self, token: &Token, node: &str, now: i64) -> Result<TokenRecord, TokenError> {
        let id = token.id.clone();
        let mut found = None;
        for (path, state) in self.paths(&id) {
            if let Some(r) = read_optional(&path)? {
                found = Some((r, state));
                break;
            }
        }
        let Some((record, state)) = found else {
            // The same work as for a wrong secret.
            std::hint::black_box(token.matches(UNKNOWN_SHA256));
            return Err(TokenRefusal::Unknown { id }.into());
        };
        // The secret first: without it, nothing about the token is told.
        if !token.matches(&record.secret_sha256) {
            return Err(TokenRefusal::WrongSecret { id }.into());
        }
        if state != TokenState::Unused {
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
        Ok(record)
    }

    /// Claims an unused token for one enrollment: renames its record into
    /// `tokens/claimed/`. Of concurrent callers exactly one succeeds; the
    /// others get `Used`. Durable (directories synced) when it returns, so a
    /// certificate recorded after it can never meet an unused token.
    pub fn claim(&self, id: &str) -> Result<(), TokenError> {
        for d in [&self.used, &self.claimed] {
            ensure_private_dir(d).map_err(io_err(d))?;
        }
        let (from, to) = (self.unused_path(id), self.claimed_path(id));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TokenRefusal::Used { id: id.to_string() }.into())
            }
            Err(e) => return Err(io_err(&from)(e)),
        }
        if let Err(e) = sync_dir(&self.dir).and_then(|()| sync_dir(&self.claimed)) {
            // Not known to be durable: give it back rather than go on.
            self.restore(id)?;
            return Err(e);
        }
        Ok(())
    }

    /// Gives back a claimed token (its enrollment failed): renames the record,
    /// untouched since `claim`, back to `tokens/<id>.json`. Needs no space.
    pub fn restore(&self, id: &str) -> Result<(), TokenError> {
        let (from, to) = (self.claimed_path(id), self.unused_path(id));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        sync_dir(&self.dir)?;
        sync_dir(&self.claimed)
    }

    /// Marks a claimed token used (its certificate is recorded): renames the
    /// record into `tokens/used/`, then adds `used_unix` if there is room.
    pub fn finish(&self, id: &str, now: i64) -> Result<(), TokenError> {
        let (from, to) = (self.claimed_path(id), self.used_path(id));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        sync_dir(&self.claimed)?;
        sync_dir(&self.used)?;
        // When it was used is for `token list`; the rename above is what counts.
        if let Ok(mut r) = read_record(&to) {
            r.used_unix = Some(now);
            if let Err(e) = write_record(&to, &r) {
                tracing::warn!(token = id, "cannot record when the token was used: {e}");
            }
        }
        Ok(())
    }

    /// The records of claimed tokens (for settling them at start).
    pub fn claimed(&self) -> Result<Vec<TokenRecord>, TokenError> {
        json_files(&self.claimed)?
            .iter()
            .map(|p| read_record(p))
            .collect()
    }
}

/// What an unknown id's secret is compared with (no secret has this digest).
const UNKNOWN_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sync_dir(dir: &Path) -> Result<(), TokenError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_record(path: &Path, record: &TokenRecord) -> Result<(), TokenError> {
    let mut bytes = serde_json::to_vec_pretty(record).expect("a token record serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes, SECRET_MODE).map_err(io_err(path))
}

fn read_record(path: &Path) -> Result<TokenRecord, TokenError> {
    read_optional(path)?
        .ok_or_else(|| io_err(path)(io::Error::new(io::ErrorKind::NotFound, "no such file")))
}

fn read_optional(path: &Path) -> Result<Option<TokenRecord>, TokenError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TokenError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// `<id>.json` files directly in `dir` (none if `dir` does not exist).
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, TokenError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let is_record = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .is_some_and(valid_id);
        if is_record {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn check_refuses_without_changing_anything_and_consume_is_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let now = 1_000_000;
        let (t, rec) = store.create("dpu-1", HOUR, now).unwrap();
        let path = store.unused_path(&t.id);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&hex::encode(t.secret)), "no secret on disk");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mode = fs::metadata(&store.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let refusal = |r: Result<TokenRecord, TokenError>| match r {
            Err(TokenError::Refused(r)) => r.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(store.check(&t, "dpu-1", now).unwrap(), rec);
        let mut wrong = t.clone();
        wrong.secret[0] ^= 1;
        assert_eq!(
            refusal(store.check(&wrong, "dpu-1", now)),
            format!("wrong secret for token {}", t.id)
        );
        assert_eq!(
            refusal(store.check(&t, "dpu-2", now)),
            format!("token {} is for node \"dpu-1\", not \"dpu-2\"", t.id)
        );
        assert!(refusal(store.check(&t, "dpu-1", now + 3600)).contains("expired at"));
        let other = Token::generate();
        assert_eq!(
            refusal(store.check(&other, "dpu-1", now)),
            format!("unknown token {}", other.id)
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "unchanged");

        // A claimed token admits no one, and is claimed once.
        store.claim(&t.id).unwrap();
        let used = format!("token {} was already used", t.id);
        assert_eq!(refusal(store.check(&t, "dpu-1", now)), used);
        assert!(matches!(
            store.claim(&t.id),
            Err(TokenError::Refused(TokenRefusal::Used { .. }))
        ));
        let list = store.list(now).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1, TokenState::Claimed);
        assert_eq!(store.claimed().unwrap(), std::slice::from_ref(&rec));
        // Restoring puts back the very same bytes.
        store.restore(&t.id).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(store.check(&t, "dpu-1", now).unwrap(), rec);
        assert_eq!(store.list(now).unwrap()[0].1, TokenState::Unused);
        assert_eq!(store.list(now + 3600).unwrap()[0].1, TokenState::Expired);
        assert!(store.claimed().unwrap().is_empty());

        store.claim(&t.id).unwrap();
        store.finish(&t.id, now + 5).unwrap();
        assert_eq!(refusal(store.check(&t, "dpu-1", now)), used);
        let list = store.list(now).unwrap();
        assert_eq!(list[0].1, TokenState::Used);
        assert_eq!(list[0].0.used_unix, Some(now + 5));
        assert!(store.restore(&t.id).is_err(), "a used token stays used");
        assert!(matches!(
            store.claim(&t.id),
            Err(TokenError::Refused(TokenRefusal::Used { .. }))
        ));
        store.delete(&t.id).unwrap();
        assert!(matches!(
            store.delete(&t.id),
            Err(TokenError::NoSuchToken(_))
        ));
        assert!(matches!(
            store.create("Bad_Name", HOUR, now),
            Err(TokenError::BadName { .. })
        ));
    }
}
