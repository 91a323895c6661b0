//! Loading the intent directory at start and whenever it changes.
//!
//! A reload is all or nothing: if any file fails, the whole reload is refused and
//! the last good manifests stay in force. Good manifests are handed on as
//! documents plus what they resolve to on their own; `effective` merges them with
//! the reported workloads and decides the version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpu_model::Intent;

use crate::diag::IntentError;
use crate::load::{fingerprint, Contents, Fingerprint, LoadError};
use crate::manifest::Doc;
use crate::resolve::resolve;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The intent directory could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The intent is invalid.
    #[error("{} error(s) in the intent", .0.len())]
    Invalid(Vec<IntentError>),
}

/// A valid set of manifests.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The documents, for resolving again together with reported workloads.
    pub docs: Arc<Vec<Doc>>,
    /// What the documents resolve to on their own.
    pub intent: Arc<Intent>,
}

impl Manifests {
    /// Resolves `docs`; the manifests are valid only on their own.
    pub fn resolve(docs: Vec<Doc>) -> Result<Self, Vec<IntentError>> {
        let intent = resolve(&docs)?;
        Ok(Manifests {
            docs: Arc::new(docs),
            intent: Arc::new(intent),
        })
    }
}

/// What one poll found.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing changed on disk.
    Unchanged,
    /// New, valid manifests (they may still mean the same intent).
    Changed(Manifests),
    /// Files changed and something failed; the last good manifests stay.
    Refused(ReloadError),
}

#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
    content_hash: Option<[u8; 32]>,
}

impl Reloader {
    pub fn new(dir: &Path) -> Self {
        Reloader {
            dir: dir.to_path_buf(),
            fingerprint: None,
            content_hash: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first load. Any failure here stops the controller.
    pub fn load_initial(&mut self) -> Result<Manifests, ReloadError> {
        self.fingerprint = Some(fingerprint(&self.dir)?);
        let contents = Contents::read(&self.dir)?;
        self.content_hash = Some(contents.hash());
        let docs = contents.docs().map_err(ReloadError::Invalid)?;
        Manifests::resolve(docs).map_err(ReloadError::Invalid)
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
        match contents.docs().and_then(Manifests::resolve) {
            Ok(m) => Outcome::Changed(m),
            Err(errors) => Outcome::Refused(ReloadError::Invalid(errors)),
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
    fn refused_reload_keeps_the_manifests_and_a_good_one_replaces_them() {
        let intent = tempfile::tempdir().unwrap();
        fs::write(intent.path().join("a.yaml"), VPC).unwrap();
        let mut r = Reloader::new(intent.path());
        let m = r.load_initial().unwrap();
        assert_eq!((m.docs.len(), m.intent.vpcs.len()), (1, 1));
        assert!(matches!(r.poll(), Outcome::Unchanged));

        fs::write(intent.path().join("b.yaml"), "kind: Vpc\n").unwrap();
        match r.poll() {
            Outcome::Refused(ReloadError::Invalid(errs)) => {
                assert!(errs[0].to_string().contains("b.yaml"), "{errs:?}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The same bad files again are not reported twice.
        assert!(matches!(r.poll(), Outcome::Unchanged));

        fs::write(intent.path().join("b.yaml"), "# only a comment\n").unwrap();
        match r.poll() {
            Outcome::Changed(m) => assert_eq!(m.intent.vpcs.len(), 1),
            other => panic!("expected new manifests, got {other:?}"),
        }
        fs::write(
            intent.path().join("b.yaml"),
            VPC.replace("{name: a}", "{name: b}")
                .replace("vni: 1", "vni: 2"),
        )
        .unwrap();
        match r.poll() {
            Outcome::Changed(m) => assert_eq!(m.intent.vpcs.len(), 2),
            other => panic!("expected new manifests, got {other:?}"),
        }
    }
}
