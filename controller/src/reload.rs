//! Loading the intent directory at start and whenever it changes.
//!
//! A reload is all or nothing: if any file fails, the whole reload is refused and
//! the last good intent stays in force. A good reload whose intent differs from
//! the current one gets the next version (persisted first, then published).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::IntentError;
use crate::load::{fingerprint, Contents, Fingerprint, LoadError};
use crate::session::Published;
use crate::store::{intent_digest, StoreError, VersionStore};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The intent directory could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The intent is invalid.
    #[error("{} error(s) in the intent", .0.len())]
    Invalid(Vec<IntentError>),
    /// The version could not be persisted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one poll found.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing changed on disk.
    Unchanged,
    /// Files changed but resolve to the intent already in force.
    Same,
    /// A new intent version.
    Reloaded(Published),
    /// Files changed and something failed; the last good intent stays.
    Refused(ReloadError),
}

#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    versions: VersionStore,
    fingerprint: Option<Fingerprint>,
    content_hash: Option<[u8; 32]>,
}

impl Reloader {
    pub fn new(dir: &Path, versions: VersionStore) -> Self {
        Reloader {
            dir: dir.to_path_buf(),
            versions,
            fingerprint: None,
            content_hash: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version in force (0 before the first good load).
    pub fn version(&self) -> u64 {
        self.versions.current().map_or(0, |c| c.version)
    }

    /// The first load. Any failure here stops the controller.
    pub fn load_initial(&mut self) -> Result<Published, ReloadError> {
        self.fingerprint = Some(fingerprint(&self.dir)?);
        let contents = Contents::read(&self.dir)?;
        self.content_hash = Some(contents.hash());
        let intent = contents.resolve().map_err(ReloadError::Invalid)?;
        let version = self.versions.commit(&intent_digest(&intent))?;
        Ok(Published {
            version,
            intent: Arc::new(intent),
        })
    }

    /// Looks for changes and loads them. Blocking (file I/O).
    pub fn poll(&mut self) -> Outcome {
        let fp = match fingerprint(&self.dir) {
            Ok(fp) => fp,
            Err(e) => return Outcome::Refused(e.into()),
        };
        if self.fingerprint.as_ref() == Some(&fp) {
            return Outcome::Unchanged;
        }
        let contents = match Contents::read(&self.dir) {
            Ok(c) => c,
            Err(e) => return Outcome::Refused(e.into()),
        };
        self.fingerprint = Some(fp);
        let hash = contents.hash();
        if self.content_hash == Some(hash) {
            return Outcome::Unchanged;
        }
        self.content_hash = Some(hash);
        let intent = match contents.resolve() {
            Ok(i) => i,
            Err(errors) => return Outcome::Refused(ReloadError::Invalid(errors)),
        };
        let before = self.version();
        match self.versions.commit(&intent_digest(&intent)) {
            Ok(v) if v == before => Outcome::Same,
            Ok(version) => Outcome::Reloaded(Published {
                version,
                intent: Arc::new(intent),
            }),
            Err(e) => {
                // Try again at the next poll.
                self.content_hash = None;
                Outcome::Refused(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const VPC: &str =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n";

    #[test]
    fn refused_reload_keeps_version_and_good_one_bumps_it() {
        let state = tempfile::tempdir().unwrap();
        let intent = tempfile::tempdir().unwrap();
        fs::write(intent.path().join("a.yaml"), VPC).unwrap();
        let mut r = Reloader::new(intent.path(), VersionStore::open(state.path()).unwrap());
        let p = r.load_initial().unwrap();
        assert_eq!(p.version, 1);
        assert!(matches!(r.poll(), Outcome::Unchanged));

        fs::write(intent.path().join("b.yaml"), "kind: Vpc\n").unwrap();
        match r.poll() {
            Outcome::Refused(ReloadError::Invalid(errs)) => {
                assert!(errs[0].to_string().contains("b.yaml"), "{errs:?}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(r.version(), 1);

        fs::write(intent.path().join("b.yaml"), "# only a comment\n").unwrap();
        assert!(matches!(r.poll(), Outcome::Same));
        fs::write(
            intent.path().join("b.yaml"),
            VPC.replace("{name: a}", "{name: b}")
                .replace("vni: 1", "vni: 2"),
        )
        .unwrap();
        match r.poll() {
            Outcome::Reloaded(p) => assert_eq!((p.version, p.intent.vpcs.len()), (2, 2)),
            other => panic!("expected a reload, got {other:?}"),
        }

        // A restart with the same files keeps the version.
        let mut r = Reloader::new(intent.path(), VersionStore::open(state.path()).unwrap());
        assert_eq!(r.load_initial().unwrap().version, 2);
    }
}
