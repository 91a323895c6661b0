//! The digest of an intent, which its version stands for, and the error of the
//! controller's own files.
//!
//! The version itself is the store's: the revision of the leader's write of
//! the digest (`intenttask::VERSION_KEY`), so every replica gives the same
//! intent the same version, and a restart that finds the same intent keeps it.

use std::io;
use std::path::PathBuf;

use dpu_model::Intent;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A digest of the resolved intent. The domain types are ordered maps all the way
/// down, so their debug form is canonical.
pub fn intent_digest(intent: &Intent) -> String {
    // The debug form goes straight into the hash (the same bytes as hashing
    // `format!("{intent:?}")`, without the string: tens of MB at 10k Services).
    struct Hashing(Sha256);
    impl std::fmt::Write for Hashing {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    std::fmt::write(&mut h, format_args!("{intent:?}")).expect("hashing cannot fail");
    hex::encode(h.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_model::{Object, Vpc};

    fn intent(vni: u32) -> Intent {
        let mut i = Intent::default();
        i.upsert(Object::Vpc(Vpc {
            name: "blue".into(),
            vni,
        }));
        i
    }

    #[test]
    fn the_digest_is_the_intent_s() {
        assert_eq!(intent_digest(&intent(1)), intent_digest(&intent(1)));
        assert_ne!(intent_digest(&intent(1)), intent_digest(&intent(2)));
        assert_eq!(intent_digest(&intent(1)).len(), 64);
        // The digest of the debug form, as replicas of earlier releases
        // compute it: they give the same intent the same version.
        let i = intent(7);
        let old = hex::encode(Sha256::digest(format!("{i:?}").as_bytes()));
        assert_eq!(intent_digest(&i), old);
    }
}
