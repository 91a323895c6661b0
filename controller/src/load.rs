//! Reading the intent directory and noticing when it changes.
//!
//! The directory is polled: a cheap fingerprint (file names, mtimes, sizes) says
//! whether to look closer, and a hash of the contents says whether anything really
//! changed. Only `*.yaml` and `*.yml` files directly in the directory count, in
//! sorted order.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dpu_model::Intent;
use sha2::{Digest, Sha256};

use crate::diag::IntentError;
use crate::manifest::{parse_file, Doc};
use crate::resolve::resolve;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The intent directory (or a file in it) could not be read.
    #[error("intent directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Names, mtimes and sizes of the manifest files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

/// The manifest files of `dir`, sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        // Follows symlinks, so a ConfigMap-style link farm works.
        if is_yaml && fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub fn fingerprint(dir: &Path) -> Result<Fingerprint, LoadError> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        out.push((path, meta.modified().ok(), meta.len()));
    }
    Ok(Fingerprint(out))
}

/// The manifest files and their contents, read at one moment.
#[derive(Debug, Clone)]
pub struct Contents {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Contents {
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let mut files = Vec::new();
        for path in manifest_files(dir)? {
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            files.push((path, bytes));
        }
        Ok(Contents { files })
    }

    /// The files, by path, with their bytes.
    pub fn files(&self) -> impl Iterator<Item = (String, &[u8])> {
        self.files
            .iter()
            .map(|(p, b)| (p.display().to_string(), b.as_slice()))
    }

    /// A hash over names and contents.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (path, bytes) in &self.files {
            let name = path.as_os_str().as_encoded_bytes();
            h.update((name.len() as u64).to_le_bytes());
            h.update(name);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().into()
    }

    /// Parses every file and resolves the whole set. Errors from all files are
    /// collected, so one reload reports everything that is wrong.
    pub fn resolve(&self) -> Result<Intent, Vec<IntentError>> {
        resolve(&self.docs()?)
    }

    /// Parses every file into documents, collecting the errors of all files.
    pub fn docs(&self) -> Result<Vec<Doc>, Vec<IntentError>> {
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for (path, bytes) in &self.files {
            let name = path.display().to_string();
            let Ok(text) = std::str::from_utf8(bytes) else {
                errors.push(IntentError::file(&name, None, "the file is not UTF-8"));
                continue;
            };
            match parse_file(&name, text) {
                Ok(d) => docs.extend(d),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yaml_files_sorted_and_contents_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("b.yml"), "").unwrap();
        fs::write(d.join("a.yaml"), "").unwrap();
        fs::write(d.join("notes.txt"), "").unwrap();
        fs::create_dir(d.join("sub.yaml")).unwrap();
        let names: Vec<_> = manifest_files(d)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);

        let before = Contents::read(d).unwrap().hash();
        let fp = fingerprint(d).unwrap();
        fs::write(d.join("a.yaml"), "# comment\n").unwrap();
        assert_ne!(fingerprint(d).unwrap(), fp);
        let after = Contents::read(d).unwrap();
        assert_ne!(after.hash(), before);
        assert!(after.resolve().unwrap().is_empty());
    }
}
