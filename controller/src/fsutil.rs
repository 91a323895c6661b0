//! Files under the state directory: private directories and atomic writes.
//!
//! Every file the controller persists (keys, the version counter, status) goes
//! through `write_atomic`, so a crash leaves either the old or the new contents,
//! never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of key files and other secrets.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of files anyone on the host may read (certificates, status).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the state directory and its subdirectories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// The `<stem>.json` files of `dir` whose stem `accept` takes, sorted; none
/// if `dir` does not exist. An error is (the path, the error).
pub fn json_files(
    dir: &Path,
    accept: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| (dir.to_path_buf(), e))?.path();
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"));
        if stem.is_some_and(&accept) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Creates `dir` (and its parents) if needed and makes it mode 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Writes `bytes` to `path` with `mode`: write a temporary file in the same
/// directory, fsync it, rename it over `path`, then fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask and ignored for an
        // existing file; set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Holds an exclusive flock(2) on `path` (made mode 0600 if missing) until the
/// returned guard drops: the one way processes sharing a state directory take
/// turns at a read-modify-write.
pub fn lock_exclusive(path: &Path) -> io::Result<nix::fcntl::Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .open(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io::Error::from(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"one", SECRET_MODE).unwrap();
        write_atomic(&p, b"two", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SECRET_MODE);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_DIR_MODE);
    }
}
