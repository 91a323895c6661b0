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
use crate::resolve::{resolve, resolve_since};

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
    /// What the last good manifests resolved to: a conflict with an object
    /// that is still the same is blamed on the one that changed.
    last_good: Option<Arc<Intent>>,
}

impl Reloader {
    pub fn new(dir: &Path) -> Self {
        Reloader {
            dir: dir.to_path_buf(),
            fingerprint: None,
            content_hash: None,
            last_good: None,
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
        let m = Manifests::resolve(docs).map_err(ReloadError::Invalid)?;
        self.last_good = Some(m.intent.clone());
        Ok(m)
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
        let previous = self.last_good.as_deref();
        match contents
            .docs()
            .and_then(|docs| Manifests::resolve_since(docs, previous))
        {
            Ok(m) => {
                self.last_good = Some(m.intent.clone());
                Outcome::Changed(m)
            }
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

    /// A Service added on the VIP:port of one that was there is blamed, at
    /// its own file, whichever name sorts first; the untouched one is named
    /// with its file.
    #[test]
    fn a_reload_blames_a_conflict_on_the_newcomer() {
        let svc = |name: &str| {
            format!(
                "apiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\nmetadata: {{name: {name}}}\nspec: {{vpc: a, clusterIPs: [10.96.0.10], ports: [{{port: 80}}]}}\n"
            )
        };
        for name in ["a-dup", "z-dup"] {
            let intent = tempfile::tempdir().unwrap();
            let subnet = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {vpc: a, cidr: 10.0.0.0/24, gateway: 10.0.0.1}\n";
            fs::write(intent.path().join("10.yaml"), format!("{VPC}---\n{subnet}")).unwrap();
            fs::write(intent.path().join("30-services.yaml"), svc("web")).unwrap();
            let mut r = Reloader::new(intent.path());
            r.load_initial().unwrap();
            fs::write(intent.path().join("99-dup.yaml"), svc(name)).unwrap();
            match r.poll() {
                Outcome::Refused(ReloadError::Invalid(errs)) => {
                    assert_eq!(errs.len(), 1, "{errs:?}");
                    let e = &errs[0];
                    assert_eq!(e.object.as_deref(), Some(&*format!("YusurService/{name}")));
                    assert!(e.file.as_deref().unwrap().ends_with("99-dup.yaml"), "{e}");
                    assert!(
                        e.message.contains("also served by YusurService/web (")
                            && e.message
                                .contains("30-services.yaml, document 1, spec.clusterIPs[0])"),
                        "{e}"
                    );
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }

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
