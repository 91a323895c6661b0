//! `apply`, `diff`, `get` and `delete`: the intent commands on the store named
//! by --state-dir or --etcd (see `objects`).

use crate::cli::StoreArgs;
use crate::objects::{
    apply, current, delete, diff, get, parse_kind, read_inputs, Change, Format, ObjectError, PREFIX,
};

/// `apply -f PATH`: one line per object, `Kind/name created|configured|unchanged`.
pub async fn run_apply(store: &StoreArgs, path: &str) -> Result<String, ObjectError> {
    let inputs = read_inputs(path)?;
    let store = store.open().await?;
    let source = format!("apply:{path}");
    let done = apply(&store, &inputs, &source).await?;
    Ok(done
        .into_iter()
        .map(|(k, c)| {
            let what = match c {
                Change::Created => "created",
                Change::Configured => "configured",
                Change::Unchanged => "unchanged",
            };
            format!("{} {what}\n", k.trim_start_matches(PREFIX))
        })
        .collect())
}

/// `diff -f PATH`.
pub async fn run_diff(store: &StoreArgs, path: &str) -> Result<String, ObjectError> {
    let inputs = read_inputs(path)?;
    let current = current(&store.open().await?).await?;
    diff(&current, &inputs)
}

/// `get [KIND [NAME]] -o FORMAT`.
pub async fn run_get(
    store: &StoreArgs,
    kind: Option<&str>,
    name: Option<&str>,
    format: Format,
) -> Result<String, ObjectError> {
    let kind = kind.map(parse_kind).transpose()?;
    let current = current(&store.open().await?).await?;
    get(&current, kind, name, format)
}

/// `delete KIND NAME`.
pub async fn run_delete(store: &StoreArgs, kind: &str, name: &str) -> Result<String, ObjectError> {
    let kind = parse_kind(kind)?;
    delete(&store.open().await?, kind, name).await?;
    Ok(format!("{}/{name} deleted\n", kind.manifest_kind()))
}
