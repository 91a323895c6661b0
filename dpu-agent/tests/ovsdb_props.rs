//! Property tests for the OVSDB JSON-RPC client's decoding side:
//!
//! * framing: any sequence of JSON messages, with any whitespace between them and
//!   split at any points, comes out whole and in order; a truncated stream yields
//!   every complete message and holds only the partial one; arbitrary bytes give
//!   errors, never panics, and never more than the bound held in memory;
//! * update2: random sequences of row inserts, modifies (as the column diffs the
//!   server sends) and deletes leave `TableCache` equal to a model of the rows;
//!   arbitrary JSON never panics the schema, update and diff code;
//! * the connection task, driven by a scripted server over a real unix socket:
//!   replies, server `echo` requests and `update2` notifications round-trip,
//!   however the bytes are split; garbage from the server ends calls with an
//!   error and never panics the task.
//!
//! `PROPTEST_CASES=N` raises the number of cases (see docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Once;
use std::time::Duration;

use dpu_agent::vswitch::ovsdb::atom::{as_uuid, map_entries, set_elements};
use dpu_agent::vswitch::ovsdb::{
    apply_diff, parse_table_updates2, ClientOptions, ColumnKind, FrameDecoder, OvsdbClient,
    OvsdbError, Schema, TableCache,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use test_support::props::config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Any JSON value, with strings full of what the frame scanner must get right
/// (quotes, escapes, brackets) and numbers that survive a text round trip.
fn json_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        prop::sample::select(vec![
            "",
            "\"",
            "\\",
            "\\\"",
            "{",
            "}",
            "[",
            "]",
            "\"}",
            "\\\\\"]",
            "a}\"]{b\\",
            "é",
            "\u{0}",
            "\u{2028}",
            "😀",
        ])
        .prop_map(str::to_string),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i32>().prop_map(|i| json!(f64::from(i) * 0.25)),
        text.prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A top-level message: OVSDB sends objects; arrays frame the same way.
fn message() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => proptest::collection::btree_map(".{0,6}", json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => proptest::collection::vec(json_value(), 0..4).prop_map(Value::Array),
    ]
}

fn whitespace() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(vec![' ', '\t', '\r', '\n']), 0..3)
        .prop_map(|c| c.into_iter().collect())
}

/// Messages written back to back, compact or pretty, with whitespace around.
fn stream() -> impl Strategy<Value = (Vec<Value>, Vec<u8>)> {
    proptest::collection::vec((message(), any::<bool>(), whitespace()), 0..6).prop_map(|msgs| {
        let mut bytes = Vec::new();
        for (m, pretty, ws) in &msgs {
            bytes.extend_from_slice(ws.as_bytes());
            let text = if *pretty {
                serde_json::to_string_pretty(m).unwrap()
            } else {
                m.to_string()
            };
            bytes.extend_from_slice(text.as_bytes());
        }
        (msgs.into_iter().map(|m| m.0).collect(), bytes)
    })
}

/// `bytes` cut at the given points (taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Value>) -> Result<(), OvsdbError> {
    while let Some(m) = decoder.next_message()? {
        out.push(m);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Whatever the split, every message comes out whole, in order, and nothing
    /// is held afterwards.
    #[test]
    fn messages_round_trip_under_any_split(
        (msgs, bytes) in stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            decoder.push(&chunk);
            drain(&mut decoder, &mut got).unwrap();
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(decoder.pending_bytes(), 0);
    }

    /// A stream cut short yields every message that was complete and holds only
    /// the start of the next one.
    #[test]
    fn truncated_stream_yields_the_complete_messages(
        (msgs, bytes) in stream(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(bytes.len() + 1);
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&bytes[..cut]);
        let mut got = Vec::new();
        drain(&mut decoder, &mut got).unwrap();
        prop_assert!(got.len() <= msgs.len());
        prop_assert_eq!(&got[..], &msgs[..got.len()]);
        // What is held is the unfinished message without the whitespace before it.
        let held = &bytes[cut - decoder.pending_bytes()..cut];
        prop_assert!(held.first().is_none_or(|b| *b == b'{' || *b == b'['), "{:?}", held);
        decoder.push(&bytes[cut..]);
        drain(&mut decoder, &mut got).unwrap();
        prop_assert_eq!(got, msgs);
    }

    /// Arbitrary bytes in arbitrary chunks: an error or more messages, never a
    /// panic, and never more than the bound held between reads.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        max in 1..512usize,
        reads in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(
                    prop::sample::select(b"{}[]\"\\ :,0a".to_vec()), 0..64),
            ],
            0..16,
        ),
    ) {
        let mut decoder = FrameDecoder::new(max);
        let mut got = Vec::new();
        for read in reads {
            decoder.push(&read);
            if drain(&mut decoder, &mut got).is_err() {
                break;
            }
            prop_assert!(decoder.pending_bytes() <= max, "{} > {max}", decoder.pending_bytes());
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// The bound is exact: a message longer than `max_message_bytes` is refused,
    /// one of that length or shorter is returned.
    #[test]
    fn the_size_bound_is_exact(msg in message(), slack in 0..3usize) {
        let text = msg.to_string();
        let max = (text.len() + slack).saturating_sub(1).max(1);
        let mut decoder = FrameDecoder::new(max);
        decoder.push(text.as_bytes());
        match decoder.next_message() {
            Ok(Some(m)) => {
                prop_assert!(text.len() <= max, "{} bytes passed a {max}-byte bound", text.len());
                prop_assert_eq!(m, msg);
            }
            Err(OvsdbError::MessageTooLarge { .. }) => prop_assert!(text.len() > max),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [129, 10_000, 500_000] {
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mut decoder = FrameDecoder::new(4 << 20);
        decoder.push(text.as_bytes());
        let err = decoder.next_message().unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}

#[test]
fn a_huge_unfinished_message_is_refused_at_the_bound() {
    let mut decoder = FrameDecoder::new(1 << 20);
    let chunk = vec![b'a'; 64 * 1024];
    decoder.push(b"{\"x\": \"");
    for _ in 0..64 {
        decoder.push(&chunk);
        match decoder.next_message() {
            Ok(None) => assert!(decoder.pending_bytes() <= 1 << 20),
            Err(OvsdbError::MessageTooLarge { limit }) => {
                assert_eq!(limit, 1 << 20);
                return;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("4 MiB of one string passed a 1 MiB bound");
}

// ---- update2 and the table cache --------------------------------------------------

const SCHEMA: &str = r#"{"name": "db", "tables": {
  "T": {"columns": {
    "name": {"type": "string"},
    "n": {"type": "integer"},
    "opt": {"type": {"key": "integer", "min": 0, "max": 1}},
    "tags": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
    "refs": {"type": {"key": {"type": "uuid", "refTable": "U"}, "min": 0, "max": "unlimited"}},
    "ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}}},
  "U": {"columns": {
    "name": {"type": "string"},
    "ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}}}}}"#;

const TABLES: [&str; 2] = ["T", "U"];

/// One row as the model holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RowModel {
    name: String,
    n: i64,
    opt: Option<i64>,
    tags: BTreeSet<String>,
    refs: BTreeSet<String>,
    ids: BTreeMap<String, String>,
}

fn row_model(table: usize) -> impl Strategy<Value = RowModel> {
    let pick = |pool: &'static [&'static str]| {
        proptest::sample::subsequence(pool.to_vec(), 0..=pool.len())
            .prop_map(|v| v.into_iter().map(str::to_string).collect::<BTreeSet<_>>())
    };
    (
        prop::sample::select(vec!["", "a", "b"]),
        -2..3i64,
        proptest::option::of(0..3i64),
        pick(&["x", "y", "z"]),
        pick(&["u1", "u2", "u3"]),
        proptest::collection::btree_map(
            prop::sample::select(vec!["k1", "k2", "k3"]),
            prop::sample::select(vec!["v1", "v2"]),
            0..3,
        ),
    )
        .prop_map(move |(name, n, opt, tags, refs, ids)| {
            let ids = ids
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if table == 0 {
                RowModel {
                    name: name.into(),
                    n,
                    opt,
                    tags,
                    refs,
                    ids,
                }
            } else {
                RowModel {
                    name: name.into(),
                    ids,
                    ..RowModel::default()
                }
            }
        })
}

/// A set as the server writes it: a lone element may come bare.
fn set_json(elements: Vec<Value>, bare_single: bool) -> Value {
    if elements.len() == 1 && bare_single {
        elements.into_iter().next().unwrap()
    } else {
        json!(["set", elements])
    }
}

fn map_json(pairs: impl IntoIterator<Item = (String, String)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// An `initial`/`insert` row: columns at their default left out, as the server does.
fn full_row(r: &RowModel, bare: bool) -> Value {
    let mut row = serde_json::Map::new();
    if !r.name.is_empty() {
        row.insert("name".into(), json!(r.name));
    }
    if r.n != 0 {
        row.insert("n".into(), json!(r.n));
    }
    if let Some(o) = r.opt {
        row.insert("opt".into(), set_json(vec![json!(o)], bare));
    }
    if !r.tags.is_empty() {
        let tags = r.tags.iter().map(|t| json!(t)).collect();
        row.insert("tags".into(), set_json(tags, bare));
    }
    if !r.refs.is_empty() {
        let refs = r.refs.iter().map(|u| json!(["uuid", u])).collect();
        row.insert("refs".into(), set_json(refs, bare));
    }
    if !r.ids.is_empty() {
        row.insert("ids".into(), map_json(r.ids.clone()));
    }
    Value::Object(row)
}

/// A `modify` row: only changed columns, each as the diff ovsdb-server(7) defines.
fn diff_row(old: &RowModel, new: &RowModel, bare: bool) -> Value {
    let mut row = serde_json::Map::new();
    if old.name != new.name {
        row.insert("name".into(), json!(new.name));
    }
    if old.n != new.n {
        row.insert("n".into(), json!(new.n));
    }
    fn sym<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> Vec<T> {
        a.symmetric_difference(b).cloned().collect()
    }
    let as_set = |o: Option<i64>| o.into_iter().collect::<BTreeSet<_>>();
    let d = sym(&as_set(old.opt), &as_set(new.opt));
    if !d.is_empty() {
        row.insert(
            "opt".into(),
            set_json(d.into_iter().map(Value::from).collect(), bare),
        );
    }
    let d = sym(&old.tags, &new.tags);
    if !d.is_empty() {
        row.insert(
            "tags".into(),
            set_json(d.into_iter().map(Value::from).collect(), bare),
        );
    }
    let d = sym(&old.refs, &new.refs);
    if !d.is_empty() {
        let refs = d.into_iter().map(|u| json!(["uuid", u])).collect();
        row.insert("refs".into(), set_json(refs, bare));
    }
    let mut pairs = Vec::new();
    for (k, v) in &old.ids {
        match new.ids.get(k) {
            None => pairs.push((k.clone(), v.clone())),
            Some(nv) if nv != v => pairs.push((k.clone(), nv.clone())),
            Some(_) => {}
        }
    }
    for (k, v) in &new.ids {
        if !old.ids.contains_key(k) {
            pairs.push((k.clone(), v.clone()));
        }
    }
    if !pairs.is_empty() {
        row.insert("ids".into(), map_json(pairs));
    }
    Value::Object(row)
}

/// Reads a cached row back into the model, refusing anything a set or map may not
/// hold (a repeated element, a non-atom).
fn read_row(row: &serde_json::Map<String, Value>) -> Result<RowModel, String> {
    let elements =
        |column: &str| -> Vec<&Value> { row.get(column).map(set_elements).unwrap_or_default() };
    let unique = |v: Vec<String>, column: &str| -> Result<BTreeSet<String>, String> {
        let set: BTreeSet<String> = v.iter().cloned().collect();
        if set.len() == v.len() {
            Ok(set)
        } else {
            Err(format!("{column} repeats an element: {v:?}"))
        }
    };
    let opt: Vec<i64> = elements("opt").iter().filter_map(|v| v.as_i64()).collect();
    if opt.len() != elements("opt").len() || opt.len() > 1 {
        return Err(format!("opt holds {:?}", row.get("opt")));
    }
    let tags: Vec<String> = elements("tags")
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or(format!("tag {v}")))
        .collect::<Result<_, _>>()?;
    let refs: Vec<String> = elements("refs")
        .iter()
        .map(|v| as_uuid(v).map(str::to_string).ok_or(format!("ref {v}")))
        .collect::<Result<_, _>>()?;
    let mut ids = BTreeMap::new();
    let entries = row.get("ids").map(map_entries).unwrap_or_default();
    for (k, v) in entries {
        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
            return Err(format!("ids pair {k} {v}"));
        };
        if ids.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("ids repeats key {k}"));
        }
    }
    Ok(RowModel {
        name: row.get("name").and_then(Value::as_str).unwrap_or("").into(),
        n: row.get("n").and_then(Value::as_i64).unwrap_or(0),
        opt: opt.first().copied(),
        tags: unique(tags, "tags")?,
        refs: unique(refs, "refs")?,
        ids,
    })
}

/// One change to one row: `None` deletes it.
type RowChange = (usize, usize, Option<RowModel>, bool);

fn row_change() -> impl Strategy<Value = RowChange> {
    (0..2usize, 0..5usize, any::<bool>()).prop_flat_map(|(table, row, bare)| {
        let new = proptest::option::weighted(0.8, row_model(table));
        (Just(table), Just(row), new, Just(bare))
    })
}

type Tables = BTreeMap<&'static str, BTreeMap<String, RowModel>>;

proptest! {
    #![proptest_config(config(256))]

    /// Inserts, column diffs and deletes, as the server would send them, keep the
    /// cache equal to the rows they describe.
    #[test]
    fn cache_follows_any_sequence_of_updates(
        steps in proptest::collection::vec(proptest::collection::vec(row_change(), 1..6), 1..8),
    ) {
        let schema = Schema::parse(&serde_json::from_str(SCHEMA).unwrap()).unwrap();
        let mut cache = TableCache::new(schema);
        let mut model: Tables = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            let mut message: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
            let mut next = model.clone();
            // The last change to a row within one message wins, as in one update2.
            let mut last: BTreeMap<(usize, usize), (Option<RowModel>, bool)> = BTreeMap::new();
            for (t, r, new, bare) in step {
                last.insert((*t, *r), (new.clone(), *bare));
            }
            for ((t, r), (new, bare)) in last {
                let table = TABLES[t];
                let uuid = format!("{table}-{r}");
                let old = model.get(table).and_then(|rows| rows.get(&uuid));
                let update = match (old, new) {
                    (None, None) => continue,
                    (Some(_), None) => {
                        next.entry(table).or_default().remove(&uuid);
                        json!({"delete": null})
                    }
                    (None, Some(new)) => {
                        let verb = if i == 0 { "initial" } else { "insert" };
                        let row = full_row(&new, bare);
                        next.entry(table).or_default().insert(uuid.clone(), new);
                        json!({ verb: row })
                    }
                    (Some(old), Some(new)) => {
                        let diff = diff_row(old, &new, bare);
                        next.entry(table).or_default().insert(uuid.clone(), new);
                        json!({"modify": diff})
                    }
                };
                message.entry(table).or_default().insert(uuid, update);
            }
            model = next;
            // Through text, as it arrives.
            let text = serde_json::to_string(&message).unwrap();
            let parsed = parse_table_updates2(&serde_json::from_str(&text).unwrap()).unwrap();
            cache.apply(&parsed).unwrap();
            for table in TABLES {
                let want = model.get(table).cloned().unwrap_or_default();
                let mut got = BTreeMap::new();
                for (uuid, row) in cache.table(table) {
                    let row = read_row(row).map_err(TestCaseError::fail)?;
                    got.insert(uuid.clone(), row);
                }
                prop_assert_eq!(&got, &want, "table {} after step {}", table, i);
            }
        }
    }

    /// Arbitrary JSON where a schema, an update or a column diff belongs: an error
    /// or a value, never a panic.
    #[test]
    fn arbitrary_json_never_panics_the_monitor_code(
        schema in json_value(),
        updates in json_value(),
        old in proptest::option::of(json_value()),
        diff in json_value(),
    ) {
        let _ = Schema::parse(&schema);
        let _ = Schema::parse(&json!({"tables": {"T": {"columns": {"c": {"type": schema.clone()}}}}}));
        for kind in [ColumnKind::Scalar, ColumnKind::Set, ColumnKind::Map] {
            let _ = apply_diff(kind, old.as_ref(), &diff);
        }
        let base = Schema::parse(&serde_json::from_str(SCHEMA).unwrap()).unwrap();
        let mut cache = TableCache::new(base);
        if let Ok(parsed) = parse_table_updates2(&updates) {
            let _ = cache.apply(&parsed);
            let _ = cache.apply(&parsed);
        }
        // The same value as one row's change, in every shape.
        for verb in ["initial", "modify", "delete"] {
            let u = json!({"T": {"T-0": {verb: updates.clone()}}});
            if let Ok(parsed) = parse_table_updates2(&u) {
                let _ = cache.apply(&parsed);
            }
        }
    }
}

// ---- the connection task against a scripted server ---------------------------------

thread_local! {
    /// Panics on this thread: the test's, and those of the tasks its runtime runs.
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts panics per thread, so that a panic inside a spawned task (caught by
/// tokio) fails the property instead of passing unseen. The runtime is
/// current-thread, so those tasks run on the test's own thread.
fn count_panics() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(std::cell::Cell::get)
}

thread_local! {
    /// One runtime per test thread, shared by its cases.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    RUNTIME.with(|rt| rt.block_on(f))
}

const BOUND: Duration = Duration::from_secs(5);

struct Server {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    listener: UnixListener,
}

impl Server {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Server {
            _dir: dir,
            path,
            listener,
        }
    }

    async fn connect(&self, max_message_bytes: usize) -> (OvsdbClient, Peer) {
        let options = ClientOptions {
            call_timeout: BOUND,
            max_message_bytes,
            ..ClientOptions::default()
        };
        let client = OvsdbClient::connect_with(&self.path, options)
            .await
            .unwrap();
        let (stream, _) = tokio::time::timeout(BOUND, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let peer = Peer {
            stream,
            decoder: FrameDecoder::new(1 << 20),
        };
        (client, peer)
    }
}

struct Peer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl Peer {
    async fn recv(&mut self) -> Value {
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return m;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(BOUND, self.stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the client closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Writes `bytes` in the given pieces, yielding between them so that the
    /// client sees separate reads.
    async fn send_split(&mut self, bytes: &[u8], cuts: &[usize]) {
        for piece in chunks(bytes, cuts) {
            if self.stream.write_all(&piece).await.is_err() {
                return; // the client hung up: allowed after garbage
            }
            tokio::task::yield_now().await;
        }
    }
}

/// A valid `<table-updates2>`.
fn table_updates2() -> impl Strategy<Value = Value> {
    let row = proptest::collection::btree_map("[a-z]{1,4}", json_value(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let update = (
        prop::sample::select(vec!["initial", "insert", "modify", "delete"]),
        row,
    )
        .prop_map(|(verb, row)| {
            if verb == "delete" {
                json!({"delete": null})
            } else {
                json!({ verb: row })
            }
        });
    proptest::collection::btree_map(
        "[A-Z][a-z]{0,3}",
        proptest::collection::btree_map("[0-9a-f]{1,4}", update, 0..3),
        0..3,
    )
    .prop_map(|t| serde_json::to_value(t).unwrap())
}

/// What the server sends ahead of the reply to the client's call.
#[derive(Debug, Clone)]
enum ServerMessage {
    Echo(Value, Value),
    Update(Value),
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let id = prop_oneof![
        "[a-z]{1,6}".prop_map(Value::from),
        any::<u32>().prop_map(Value::from)
    ];
    prop_oneof![
        (id, proptest::collection::vec(json_value(), 0..3))
            .prop_map(|(id, params)| ServerMessage::Echo(id, Value::Array(params))),
        table_updates2().prop_map(ServerMessage::Update),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Over a real socket, split anywhere: the reply's result reaches the call
    /// unchanged, every server echo is answered with its id and params, and
    /// every update2 reaches the monitor as parsed.
    #[test]
    fn replies_echoes_and_updates_round_trip(
        initial in table_updates2(),
        before in proptest::collection::vec(server_message(), 0..5),
        result in json_value(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let panics = count_panics();
        block_on(async {
            let server = Server::new();
            let (client, mut peer) = server.connect(1 << 20).await;
            let requests = BTreeMap::new();
            let monitor = tokio::spawn({
                let client = client.clone();
                async move { client.monitor_cond("db", "mon", &requests).await }
            });
            let request = peer.recv().await;
            prop_assert_eq!(&request["method"], "monitor_cond");
            let reply = json!({"id": request["id"], "result": initial, "error": null});
            peer.send_split(reply.to_string().as_bytes(), &cuts).await;
            let (got_initial, mut monitor) = monitor.await.unwrap().unwrap();
            prop_assert_eq!(got_initial, parse_table_updates2(&initial).unwrap());

            let call = tokio::spawn({
                let client = client.clone();
                async move { client.call("anything", json!([])).await }
            });
            let request = peer.recv().await;
            let mut bytes = Vec::new();
            for m in &before {
                let m = match m {
                    ServerMessage::Echo(id, params) => {
                        json!({"id": id, "method": "echo", "params": params})
                    }
                    ServerMessage::Update(u) => {
                        json!({"id": null, "method": "update2", "params": ["mon", u]})
                    }
                };
                bytes.extend(m.to_string().into_bytes());
            }
            let reply = json!({"id": request["id"], "result": result, "error": null});
            bytes.extend(reply.to_string().into_bytes());
            peer.send_split(&bytes, &cuts).await;

            prop_assert_eq!(call.await.unwrap().unwrap(), result.clone());
            for m in &before {
                match m {
                    ServerMessage::Echo(id, params) => {
                        let answer = peer.recv().await;
                        prop_assert_eq!(answer, json!({"id": id, "result": params, "error": null}));
                    }
                    ServerMessage::Update(u) => {
                        let next = tokio::time::timeout(BOUND, monitor.next()).await.unwrap();
                        prop_assert_eq!(next, Some(parse_table_updates2(u).unwrap()));
                    }
                }
            }
            let echoes = before.iter().filter(|m| matches!(m, ServerMessage::Echo(..))).count();
            prop_assert_eq!(client.echoes_answered(), echoes as u64);
            Ok(())
        })?;
        prop_assert_eq!(count_panics(), panics, "a task panicked");
    }

    /// Whatever the server sends (garbage, truncated or oversized messages,
    /// valid ones of the wrong shape), the pending call ends with a value or an
    /// error once the server goes away, and nothing panics.
    #[test]
    fn garbage_from_the_server_ends_calls_without_panics(
        valid in proptest::collection::vec(message(), 0..3),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        truncate in any::<prop::sample::Index>(),
        max in 16..4096usize,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let panics = count_panics();
        block_on(async {
            let server = Server::new();
            let (client, mut peer) = server.connect(max).await;
            let call = tokio::spawn({
                let client = client.clone();
                async move { client.call("anything", json!([])).await }
            });
            let request = peer.recv().await;
            let mut bytes = Vec::new();
            for mut m in valid {
                // Some of them answer the call, with whatever else they hold.
                if let Some(o) = m.as_object_mut() {
                    if o.contains_key("result") || o.contains_key("error") {
                        o.insert("id".into(), request["id"].clone());
                    }
                }
                bytes.extend(m.to_string().into_bytes());
            }
            bytes.extend(&garbage);
            bytes.truncate(truncate.index(bytes.len() + 1));
            peer.send_split(&bytes, &cuts).await;
            drop(peer);
            let outcome = tokio::time::timeout(BOUND, call).await;
            prop_assert!(outcome.is_ok(), "the call did not end after the server left");
            tokio::time::timeout(BOUND, client.closed()).await.unwrap();
            Ok(())
        })?;
        prop_assert_eq!(count_panics(), panics, "a task panicked");
    }
}
