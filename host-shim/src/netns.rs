//! Network namespaces. The main thread never calls setns: a netlink socket for another
//! namespace is opened on a short-lived thread that enters it, and the socket keeps
//! that namespace for its whole life, so every later request on it acts there.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::ShimError;
use crate::links::Links;

/// The netns the plugin was started in. Open it on the main thread, first.
pub fn open_host() -> Result<File, ShimError> {
    File::open("/proc/self/ns/net").map_err(|e| ShimError::io("opening /proc/self/ns/net", e))
}

/// Opens a container netns by path. `Ok(None)` when it does not exist.
pub fn open(path: &Path) -> Result<Option<File>, ShimError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ShimError::io(
            format!("opening netns {}", path.display()),
            e,
        )),
    }
}

/// Refuses a container netns that is the plugin's own: moving the VF "into" it would
/// rename host interfaces, and DEL would move host interfaces around.
pub fn ensure_distinct(host: &File, container: &File, path: &Path) -> Result<(), ShimError> {
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino()));
    let (h, c) = (id(host), id(container));
    match (h, c) {
        (Ok(h), Ok(c)) if h == c => Err(ShimError::InvalidEnv {
            vars: vec!["CNI_NETNS"],
            reason: format!("{} is the plugin's own netns", path.display()),
        }),
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), _) | (_, Err(e)) => Err(ShimError::io(
            format!("inspecting netns {}", path.display()),
            e,
        )),
    }
}

/// Netlink in the calling thread's netns (the host's, on the main thread).
pub fn links_here(label: &str) -> Result<Links, ShimError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| ShimError::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(Links::new(handle, label))
}

/// Netlink in the netns `ns`, opened on a dedicated thread. Needs a tokio runtime.
pub fn links_in(ns: &File, label: &str) -> Result<Links, ShimError> {
    let runtime = tokio::runtime::Handle::current();
    let ns = ns
        .try_clone()
        .map_err(|e| ShimError::io(format!("duplicating the fd of {label}"), e))?;
    let entered = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> io::Result<_> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            // The socket registers with the runtime's reactor, so enter it here.
            let _guard = runtime.enter();
            rtnetlink::new_connection()
        })
        .map_err(|e| ShimError::io("spawning the netns thread", e))?
        .join()
        .map_err(|_| ShimError::io("netns thread", io::Error::other("panicked")))?;
    let (conn, handle, _) =
        entered.map_err(|e| ShimError::io(format!("opening netlink in {label}"), e))?;
    tokio::spawn(conn);
    Ok(Links::new(handle, label))
}
