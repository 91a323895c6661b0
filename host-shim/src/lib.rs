//! `host-shim`, the host's CNI plugin (spec 1.1). It holds no state and runs no daemon:
//! on ADD it asks the DPU agent for an attachment and moves the VF the agent names into
//! the pod; on DEL it moves the VF back and releases the attachment. See README.md for
//! the config, the commands and the error codes.

mod agent;
mod attachment;
mod check;
mod commands;
mod config;
mod env;
mod error;
mod links;
mod log;
mod netns;
mod result;
mod sysfs;
mod vf;

use std::io::{IsTerminal, Read};

pub use crate::config::{LATEST_VERSION, SUPPORTED_VERSIONS};
pub use crate::error::{codes, CniCode, ShimError};

/// What the process prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one CNI invocation. `get_env` reads an environment variable; `stdin` is the
/// network config. On error, stdout is a CNI Error document and the exit status is its
/// code (capped at 255).
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut version = LATEST_VERSION;
    match invoke(&get_env, stdin, &mut version) {
        Ok(Some(doc)) => Outcome {
            stdout: doc.to_string(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => {
            log::debug(format_args!("error: {}", error::ErrorChain(&e)));
            Outcome {
                stdout: e.to_cni_json(version),
                exit_code: i32::try_from(e.code().clamp(1, 255)).unwrap_or(1),
            }
        }
    }
}

fn invoke(
    get_env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version: &mut &'static str,
) -> Result<Option<serde_json::Value>, ShimError> {
    let env = env::from_lookup(get_env)?;
    let mut input = Vec::new();
    // VERSION may be run by hand; do not wait on a terminal for a config.
    let interactive = env.command == env::Command::Version && std::io::stdin().is_terminal();
    if !interactive {
        stdin
            .read_to_end(&mut input)
            .map_err(|e| ShimError::io("reading the network config from stdin", e))?;
    }
    let declared = config::peek_version(&input);
    if let Some(v) = declared {
        *version = v.as_str();
    }
    if env.command == env::Command::Version {
        return Ok(Some(result::version_result(declared)));
    }
    let conf = config::parse(&input, env.command)?;
    log::debug(format_args!(
        "{:?} container={} ifname={} netns={:?}",
        env.command, env.container_id, env.ifname, env.netns
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ShimError::io("starting the async runtime", e))?;
    runtime.block_on(commands::execute(&env, &conf))
}
