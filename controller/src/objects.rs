//! Intent objects in the store, and the commands that change them: `apply`,
//! `get`, `delete` and `diff` (like `kubectl`'s), against the embedded store
//! or etcd alike.
//!
//! Each object is one key, `intent/<kind>/<name>` with the manifest kind
//! (`intent/YusurService/web`), whose value is a JSON [`Stored`]: the object's
//! one YAML document and where it came from. A change is checked the way
//! `serve` checks a reload: every object the store would hold afterwards is
//! resolved together, and any error refuses the whole change, naming the file,
//! document, object and field. It is then written in one transaction that
//! holds only if the intent has not changed since it was read, so two
//! concurrent `apply`s cannot both pass on a state that never existed.
//!
//! That check is one comparison, whatever the number of objects: every write
//! of intent also writes [`GUARD`], `intent/.guard`, and compares its mod
//! revision with the one read (etcd allows 128 comparisons and 128 writes per
//! transaction by default, `--max-txn-ops`). The guard's mod revision is so the
//! revision of the last change to the intent.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use dpu_model::{Intent, Kind};
use serde::{Deserialize, Serialize};

use crate::diag::{lines, IntentError};
use crate::kv::{Cmp, KvError, Revision, Store, Txn};
use crate::load::manifest_files;
use crate::manifest::{parse_file, Doc};
use crate::resolve::{resolve, resolve_since};

/// Every intent object is under this prefix.
pub const PREFIX: &str = "intent/";
/// Written by every change of intent, with the writer as its value.
pub const GUARD: &str = "intent/.guard";
/// An input file (or stdin) is at most this large.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// The value of an intent key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// What wrote it: `apply` (with the file), or `dir:<intent dir>`.
    pub source: String,
    /// The object's one YAML document.
    pub manifest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] KvError),
    /// The input or the result is invalid; nothing was changed.
    #[error("{} error(s); nothing was changed:\n  {}", .0.len(), lines(.0))]
    Invalid(Vec<IntentError>),
    /// An input file could not be read.
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    /// Another writer changed an object between our read and our write (or,
    /// for a leader's import, leadership was lost).
    #[error("the intent changed while this command ran (store revision {0}); nothing was changed, run it again")]
    Conflict(Revision),
    /// `get`/`delete` named a kind or object that does not exist.
    #[error("{0}")]
    NotFound(String),
}

impl ObjectError {
    /// 3 for an invalid intent (as `serve`), 2 for a bad command line, 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ObjectError::Invalid(_) => 3,
            ObjectError::Input { .. } | ObjectError::NotFound(_) => 2,
            ObjectError::Store(_) | ObjectError::Conflict(_) => 1,
        }
    }
}

/// The store key of an object.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{PREFIX}{}/{name}", kind.manifest_kind())
}

/// A kind as a user types it: the manifest kind (`YusurService`) or the
/// model's (`Service`), any case, singular or with an `s`.
pub fn parse_kind(text: &str) -> Result<Kind, ObjectError> {
    let t = text.to_ascii_lowercase();
    let t = t.strip_suffix('s').filter(|_| t.len() > 3).unwrap_or(&t);
    Kind::ALL
        .into_iter()
        .find(|k| {
            k.manifest_kind().eq_ignore_ascii_case(t) || format!("{k:?}").eq_ignore_ascii_case(t)
        })
        .ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.manifest_kind()).collect();
            ObjectError::NotFound(format!(
                "unknown kind {text:?}; the kinds are {}",
                known.join(", ")
            ))
        })
}

/// One object to write: its document and its YAML.
#[derive(Debug, Clone)]
pub struct Input {
    pub doc: Doc,
    pub yaml: String,
}

/// Reads `path`: a manifest file, a directory of them (`*.yaml`, `*.yml`, as
/// `--intent-dir`) or `-` for stdin. Every file is parsed; the errors of all
/// of them are returned together.
pub fn read_inputs(path: &str) -> Result<Vec<Input>, ObjectError> {
    let mut files = Vec::new();
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| input_error("-", e))?;
        files.push(("<stdin>".to_string(), text));
    } else {
        let p = Path::new(path);
        let paths = if p.is_dir() {
            manifest_files(p).map_err(|e| input_error(path, e))?
        } else {
            vec![p.to_path_buf()]
        };
        for f in paths {
            let name = f.display().to_string();
            let meta = std::fs::metadata(&f).map_err(|e| input_error(&name, e))?;
            if meta.len() > MAX_INPUT_BYTES {
                return Err(input_error(
                    &name,
                    format!("larger than {MAX_INPUT_BYTES} bytes"),
                ));
            }
            let bytes = std::fs::read(&f).map_err(|e| input_error(&name, e))?;
            let text = String::from_utf8(bytes).map_err(|_| input_error(&name, "not UTF-8"))?;
            files.push((name, text));
        }
    }
    for (name, text) in &files {
        if text.len() as u64 > MAX_INPUT_BYTES {
            return Err(input_error(
                name,
                format!("larger than {MAX_INPUT_BYTES} bytes"),
            ));
        }
    }
    parse_inputs(files.iter().map(|(n, t)| (n.as_str(), t.as_bytes())))
        .map_err(ObjectError::Invalid)
}

/// Parses manifest files, (name, bytes) each, into objects; the errors of all
/// of them are returned together.
pub fn parse_inputs<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<Input>, Vec<IntentError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, bytes) in files {
        let Ok(text) = std::str::from_utf8(bytes) else {
            errors.push(IntentError::file(name, None, "the file is not UTF-8"));
            continue;
        };
        match split(name, text) {
            Ok(inputs) => out.extend(inputs),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(out)
}

fn input_error(path: &str, e: impl ToString) -> ObjectError {
    ObjectError::Input {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// The documents of one file, each with its own YAML (re-serialized from the
/// parsed document, so the store holds one canonical document per object).
fn split(file: &str, text: &str) -> Result<Vec<Input>, Vec<IntentError>> {
    let docs = parse_file(file, text)?;
    let values: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap_or(serde_yaml_ng::Value::Null))
        .collect();
    Ok(docs
        .into_iter()
        .map(|doc| {
            let value = &values[doc.source.document - 1];
            let yaml = serde_yaml_ng::to_string(value).expect("a parsed document serializes");
            Input { doc, yaml }
        })
        .collect())
}

/// The intent objects in the store, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub revision: Revision,
    /// The guard's mod revision: the last change to the intent (0: none yet).
    pub guard: Revision,
    /// By key: the stored value, its mod revision and its document.
    pub objects: BTreeMap<String, (Stored, Revision, Doc)>,
}

impl Current {
    pub fn docs(&self) -> Vec<Doc> {
        self.objects.values().map(|(_, _, d)| d.clone()).collect()
    }
}

/// Reads every intent object. A stored object that does not parse, or whose
/// key is not its own kind and name, is an error naming the key: the store
/// was written by something else.
pub async fn current(store: &Store) -> Result<Current, ObjectError> {
    let listing = store.list(PREFIX).await?;
    from_listing(listing)
}

/// [`current`] from a listing of [`PREFIX`], with its mod revisions reused:
/// a value whose mod revision `previous` already holds is not parsed again.
pub fn from_listing_since(
    listing: crate::kv::Listing,
    previous: Option<&Current>,
) -> Result<Current, ObjectError> {
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    let mut guard = 0;
    for e in listing.entries {
        if e.key == GUARD {
            guard = e.mod_revision;
            continue;
        }
        if let Some(same) = previous
            .and_then(|p| p.objects.get(&e.key))
            .filter(|(_, rev, _)| *rev == e.mod_revision)
        {
            objects.insert(e.key, same.clone());
            continue;
        }
        match parse_entry(&e.key, &e.value) {
            Ok((stored, doc)) => {
                objects.insert(e.key, (stored, e.mod_revision, doc));
            }
            Err(errs) => errors.extend(errs),
        }
    }
    if !errors.is_empty() {
        return Err(ObjectError::Invalid(errors));
    }
    Ok(Current {
        revision: listing.revision,
        guard,
        objects,
    })
}

/// [`current`] from a listing of [`PREFIX`].
pub fn from_listing(listing: crate::kv::Listing) -> Result<Current, ObjectError> {
    from_listing_since(listing, None)
}

/// One stored object: its value and its document. Errors name the key.
fn parse_entry(k: &str, value: &str) -> Result<(Stored, Doc), Vec<IntentError>> {
    let file = format!("store:{k}");
    let stored: Stored = serde_json::from_str(value).map_err(|err| {
        vec![IntentError::file(
            &file,
            None,
            format!("not a stored object: {err}"),
        )]
    })?;
    let mut docs = parse_file(&file, &stored.manifest)?;
    if docs.len() != 1 {
        return Err(vec![IntentError::file(
            &file,
            None,
            format!("holds {} documents, not one", docs.len()),
        )]);
    }
    let doc = docs.remove(0);
    if key(doc.kind, &doc.name) != k {
        return Err(vec![IntentError::file(
            &file,
            None,
            format!("holds {}, not the object its key names", doc.object()),
        )]);
    }
    Ok((stored, doc))
}

impl Current {
    /// Applies a watch's events. A put whose value does not parse leaves the
    /// key as it was; its errors are returned (the caller keeps the last good
    /// intent in force and says why).
    pub fn apply_events(&mut self, events: &[crate::kv::Event]) -> Vec<IntentError> {
        let mut errors = Vec::new();
        for e in events {
            self.revision = self.revision.max(e.mod_revision);
            if e.key == GUARD {
                if e.kind == crate::kv::EventKind::Put {
                    self.guard = e.mod_revision;
                }
                continue;
            }
            match (&e.kind, &e.value) {
                (crate::kv::EventKind::Put, Some(v)) => match parse_entry(&e.key, v) {
                    Ok((stored, doc)) => {
                        self.objects
                            .insert(e.key.clone(), (stored, e.mod_revision, doc));
                    }
                    Err(errs) => errors.extend(errs),
                },
                _ => {
                    self.objects.remove(&e.key);
                }
            }
        }
        errors
    }

    /// The keys whose object differs between `self` and `other` (by mod
    /// revision), and those only one of them has.
    pub fn differences(&self, other: &Current) -> usize {
        let a = self.objects.iter().map(|(k, (_, r, _))| (k, r));
        let b: BTreeMap<_, _> = other.objects.iter().map(|(k, (_, r, _))| (k, r)).collect();
        let same = a.filter(|(k, r)| b.get(k) == Some(r)).count();
        self.objects.len() + other.objects.len() - 2 * same
    }
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

/// The objects an apply would write, checked: each input's key, value and
/// what it changes. Errors if the result does not resolve.
pub fn plan_apply(
    current: &Current,
    inputs: &[Input],
    source: &str,
) -> Result<Vec<(String, Stored, Change)>, ObjectError> {
    check(current, inputs, &[], None)?;
    Ok(writes(current, inputs, source))
}

/// Resolves what the store would hold with `inputs` written and `removed`
/// deleted. A conflict between an object unchanged since `previous` (the last
/// good intent) and a changed one is blamed on the changed one
/// ([`resolve_since`]).
fn check(
    current: &Current,
    inputs: &[Input],
    removed: &[String],
    previous: Option<&Intent>,
) -> Result<(), ObjectError> {
    let mut docs: BTreeMap<&String, &Doc> = current
        .objects
        .iter()
        .map(|(k, (_, _, d))| (k, d))
        .collect();
    for k in removed {
        docs.remove(k);
    }
    let mut all: Vec<Doc> = Vec::with_capacity(inputs.len() + docs.len());
    for i in inputs {
        docs.remove(&key(i.doc.kind, &i.doc.name));
        all.push(i.doc.clone());
    }
    all.extend(docs.into_values().cloned());
    resolve_since(&all, previous)
        .map(|_| ())
        .map_err(ObjectError::Invalid)
}

fn writes(current: &Current, inputs: &[Input], source: &str) -> Vec<(String, Stored, Change)> {
    inputs
        .iter()
        .map(|i| {
            let k = key(i.doc.kind, &i.doc.name);
            let change = match current.objects.get(&k) {
                None => Change::Created,
                Some((s, _, _)) if s.manifest == i.yaml => Change::Unchanged,
                Some(_) => Change::Configured,
            };
            let stored = Stored {
                source: source.to_string(),
                manifest: i.yaml.clone(),
            };
            (k, stored, change)
        })
        .collect()
}

/// What an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub written: usize,
    pub deleted: usize,
}

/// Makes the objects that `source` wrote exactly `inputs` (`--intent-dir`:
/// `source` is `dir:<path>`): writes what is new or changed, and deletes what
/// `source` wrote before and `inputs` no longer has (mark and sweep). Objects
/// other writers made are left alone, but the result is resolved with them.
/// One guarded transaction, as [`apply`], that also holds only if `fence`
/// does (the leader's, see `kv::election`): a replica that has lost
/// leadership writes nothing. `read` (the caller's last read) saves parsing
/// values that have not changed; `previous` is the intent in force, for blame.
pub async fn import(
    store: &Store,
    inputs: &[Input],
    source: &str,
    read: Option<&Current>,
    previous: Option<&Intent>,
    fence: Option<Cmp>,
) -> Result<Imported, ObjectError> {
    let current = from_listing_since(store.list(PREFIX).await?, read)?;
    let keep: std::collections::BTreeSet<String> = inputs
        .iter()
        .map(|i| key(i.doc.kind, &i.doc.name))
        .collect();
    let removed: Vec<String> = current
        .objects
        .iter()
        .filter(|(k, (s, _, _))| s.source == source && !keep.contains(*k))
        .map(|(k, _)| k.clone())
        .collect();
    check(&current, inputs, &removed, previous)?;
    let mut txn = Txn::new();
    let mut done = Imported::default();
    for (k, stored, change) in writes(&current, inputs, source) {
        if change != Change::Unchanged {
            txn = txn.put(k, serde_json::to_string(&stored).expect("serializes"));
            done.written += 1;
        }
    }
    for k in removed {
        txn = txn.delete(k);
        done.deleted += 1;
    }
    if let Some(fence) = fence {
        txn = txn.when(fence);
    }
    commit(store, txn, &current, source).await?;
    Ok(done)
}

/// Checks the result, then writes every input in one transaction that holds
/// only if none of the objects read has changed.
pub async fn apply(
    store: &Store,
    inputs: &[Input],
    source: &str,
) -> Result<Vec<(String, Change)>, ObjectError> {
    let current = current(store).await?;
    let plan = plan_apply(&current, inputs, source)?;
    let mut txn = Txn::new();
    for (k, stored, change) in &plan {
        if *change != Change::Unchanged {
            txn = txn.put(
                k.clone(),
                serde_json::to_string(stored).expect("serializes"),
            );
        }
    }
    commit(store, txn, &current, source).await?;
    Ok(plan.into_iter().map(|(k, _, c)| (k, c)).collect())
}

/// Deletes one object, if what is left still resolves.
pub async fn delete(store: &Store, kind: Kind, name: &str) -> Result<(), ObjectError> {
    let current = current(store).await?;
    let k = key(kind, name);
    if !current.objects.contains_key(&k) {
        return Err(ObjectError::NotFound(format!(
            "{}/{name} not found",
            kind.manifest_kind()
        )));
    }
    let rest: Vec<Doc> = current
        .objects
        .iter()
        .filter(|(key, _)| **key != k)
        .map(|(_, (_, _, d))| d.clone())
        .collect();
    resolve(&rest).map_err(|errors| {
        ObjectError::Invalid(
            errors
                .into_iter()
                .map(|mut e| {
                    e.message = format!(
                        "{} (after deleting {}/{name})",
                        e.message,
                        kind.manifest_kind()
                    );
                    e
                })
                .collect(),
        )
    })?;
    commit(store, Txn::new().delete(k), &current, "delete").await
}

/// Writes `txn` (intent writes only) if the intent is still as `current`
/// read it, with the guard.
async fn commit(
    store: &Store,
    txn: Txn,
    current: &Current,
    writer: &str,
) -> Result<(), ObjectError> {
    if txn.ops.is_empty() {
        return Ok(());
    }
    let txn = txn
        .when(Cmp::ModRevision(GUARD.into(), current.guard))
        .put(GUARD, writer);
    let r = store.txn(txn).await?;
    if !r.succeeded {
        return Err(ObjectError::Conflict(r.revision));
    }
    Ok(())
}

/// How `get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// The objects of `kind` (all kinds if `None`), or the one named.
pub fn get(
    current: &Current,
    kind: Option<Kind>,
    name: Option<&str>,
    format: Format,
) -> Result<String, ObjectError> {
    let selected: Vec<&(Stored, Revision, Doc)> = current
        .objects
        .values()
        .filter(|(_, _, d)| kind.is_none_or(|k| d.kind == k))
        .filter(|(_, _, d)| name.is_none_or(|n| d.name == n))
        .collect();
    if let (Some(k), Some(n), true) = (kind, name, selected.is_empty()) {
        return Err(ObjectError::NotFound(format!(
            "{}/{n} not found",
            k.manifest_kind()
        )));
    }
    Ok(match format {
        Format::Yaml => selected
            .iter()
            .map(|(s, _, _)| format!("---\n{}", s.manifest))
            .collect(),
        Format::Json => {
            let values: Vec<serde_json::Value> = selected
                .iter()
                .map(|(s, _, _)| {
                    serde_yaml_ng::from_str(&s.manifest).expect("a stored manifest parsed before")
                })
                .collect();
            let out = if name.is_some() && values.len() == 1 {
                values.into_iter().next().expect("one")
            } else {
                serde_json::json!({ "kind": "List", "items": values })
            };
            serde_json::to_string_pretty(&out).expect("serializes") + "\n"
        }
    })
}

/// What `apply` of `inputs` would change, as a unified-style diff per object;
/// empty when nothing would.
pub fn diff(current: &Current, inputs: &[Input]) -> Result<String, ObjectError> {
    let plan = plan_apply(current, inputs, "diff")?;
    let mut out = String::new();
    for (k, stored, change) in plan {
        let old = match change {
            Change::Unchanged => continue,
            Change::Created => "",
            Change::Configured => current.objects[&k].0.manifest.as_str(),
        };
        out.push_str(&format!("--- store:{k}\n+++ {k}\n"));
        out.push_str(&line_diff(old, &stored.manifest));
    }
    Ok(out)
}

/// A line diff (longest common subsequence; documents are small): ` ` kept,
/// `-` removed, `+` added.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
