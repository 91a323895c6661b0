//! Reading the intent directory at start and whenever it changes, and the
//! manifests in force.
//!
//! A reload is all or nothing: if any file fails, nothing is imported and the
//! last good intent stays in force. The objects are imported into the store
//! (`objects::import`), where they are resolved with every other object; what
//! the store holds becomes [`Manifests`], which `effective` merges with the
//! reported workloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpu_model::Intent;

use crate::diag::IntentError;
use crate::load::{fingerprint, Contents, Fingerprint, LoadError};
use crate::manifest::Doc;
use crate::objects::{parse_inputs, Input};
use crate::resolve::{resolve, resolve_after, resolve_since};

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

    /// [`Manifests::resolve`], blaming a conflict on the object that changed
    /// since `previous` (the last good manifests' intent), see
    /// [`resolve_since`].
    pub fn resolve_since(
        docs: Vec<Doc>,
        previous: Option<&Intent>,
    ) -> Result<Self, Vec<IntentError>> {
        let intent = resolve_since(&docs, previous)?;
        Ok(Manifests {
            docs: Arc::new(docs),
            intent: Arc::new(intent),
        })
    }
}

impl Manifests {
    /// [`Manifests::resolve_since`] `previous`, reusing what did not change
    /// (see [`resolve_after`]): the same result and errors, at the cost of
    /// what changed.
    pub fn resolve_after(docs: Vec<Doc>, previous: &Manifests) -> Result<Self, Vec<IntentError>> {
        let intent = resolve_after(&docs, &previous.docs, &previous.intent)?;
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
    /// Files changed and every one parsed: the objects they hold, to import.
    Changed(Vec<Input>),
    /// Files changed and something failed; nothing is imported.
    Refused(ReloadError),
}

/// The intent directory as a source of objects (`serve --intent-dir`): it
/// reads and parses the files when they change; `server` imports the objects
/// into the store, which resolves them with the rest of the intent.
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
    pub fn load_initial(&mut self) -> Result<Vec<Input>, ReloadError> {
        self.fingerprint = Some(fingerprint(&self.dir)?);
        let contents = Contents::read(&self.dir)?;
        self.content_hash = Some(contents.hash());
        inputs(&contents)
    }

    /// Forgets what was read, so that the next poll hands the files on again
    /// (an import that could not be written is retried).
    pub fn retry(&mut self) {
        self.fingerprint = None;
        self.content_hash = None;
    }

    /// Looks for changes and reads them. Blocking (file I/O).
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
        match inputs(&contents) {
            Ok(i) => Outcome::Changed(i),
            Err(e) => Outcome::Refused(e),
        }
    }
}

fn inputs(contents: &Contents) -> Result<Vec<Input>, ReloadError> {
    let files: Vec<(String, &[u8])> = contents.files().collect();
    parse_inputs(files.iter().map(|(n, b)| (n.as_str(), *b))).map_err(ReloadError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const VPC: &str =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n";

    #[test]
    fn a_refused_read_is_reported_once_and_a_good_one_hands_the_objects_on() {
        let intent = tempfile::tempdir().unwrap();
        fs::write(intent.path().join("a.yaml"), VPC).unwrap();
        let mut r = Reloader::new(intent.path());
        let inputs = r.load_initial().unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(
            inputs[0].yaml,
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata:\n  name: a\nspec:\n  vni: 1\n"
        );
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
            Outcome::Changed(i) => assert_eq!(i.len(), 1),
            other => panic!("expected objects, got {other:?}"),
        }
        fs::write(
            intent.path().join("b.yaml"),
            VPC.replace("{name: a}", "{name: b}")
                .replace("vni: 1", "vni: 2"),
        )
        .unwrap();
        match r.poll() {
            Outcome::Changed(i) => assert_eq!(i.len(), 2),
            other => panic!("expected objects, got {other:?}"),
        }
        // After retry(), the same files are handed on again (an import that
        // could not be written).
        r.retry();
        assert!(matches!(r.poll(), Outcome::Changed(i) if i.len() == 2));
    }
}
