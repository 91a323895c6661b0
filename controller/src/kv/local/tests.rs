//! What only the embedded store has: files shared by processes, a torn last
//! line, compaction by rename. The semantics both stores share are in
//! `tests/kv_conformance.rs`.

use super::*;

fn put(s: &LocalStore, k: &str, v: &str) -> Revision {
    let r = s.txn(Txn::new().put(k, v)).unwrap();
    assert!(r.succeeded);
    r.revision
}

#[test]
fn a_second_handle_sees_what_the_first_wrote_as_another_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalStore::open(dir.path()).unwrap();
    let b = LocalStore::open(dir.path()).unwrap();
    assert_eq!(a.cluster_id(), b.cluster_id());
    assert_eq!(put(&a, "x", "1"), 1);
    assert_eq!(b.get("x").unwrap().1.unwrap().value, "1");
    // b's write is checked against a's: a stale comparison fails.
    let stale = b
        .txn(
            Txn::new()
                .when(Cmp::ModRevision("x".into(), 0))
                .put("x", "2"),
        )
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, 1);
    assert_eq!(put(&b, "y", "1"), 2);
    assert_eq!(a.list("").unwrap().revision, 2);
}

#[test]
fn a_torn_last_line_is_ignored_by_readers_and_cut_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    put(&s, "x", "1");
    let log = dir.path().join(LOG);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(br#"{"rev":2,"ops":[{"put":{"k":"x","v":"#)
        .unwrap();
    drop(f);
    let r = LocalStore::open(dir.path()).unwrap();
    assert_eq!(r.get("x").unwrap(), (1, r.get("x").unwrap().1));
    assert_eq!(put(&r, "x", "3"), 2);
    let reopened = LocalStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get("x").unwrap().1.unwrap().value, "3");
    assert_eq!(reopened.list("").unwrap().revision, 2);
}

#[test]
fn a_corrupt_line_is_an_error_that_names_the_file_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    put(&s, "x", "1");
    let log = dir.path().join(LOG);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"not json\n").unwrap();
    let err = LocalStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("log.jsonl") && err.contains("corrupt store") && err.contains("at byte"),
        "{err}"
    );
}

#[test]
fn compaction_keeps_state_and_later_history_and_other_handles_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalStore::open(dir.path()).unwrap();
    let b = LocalStore::open(dir.path()).unwrap();
    for i in 1..=5 {
        put(&a, &format!("k{i}"), &i.to_string());
    }
    a.txn(Txn::new().delete("k1")).unwrap();
    a.compact(4).unwrap();
    // Reopened from files: the snapshot at 4, then revisions 5 and 6.
    let c = LocalStore::open(dir.path()).unwrap();
    let l = c.list("k").unwrap();
    assert_eq!(l.revision, 6);
    let keys: Vec<_> = l.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k3", "k4", "k5"]);
    assert_eq!(l.entries[3].mod_revision, 5);
    // b had read nothing since revision 0: it reloads after the rename.
    assert_eq!(b.list("k").unwrap(), l);
    assert!(matches!(b.compact(9), Err(KvError::Refused(_))));
}

#[test]
fn the_cluster_id_is_made_once_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let id = LocalStore::open(dir.path())
        .unwrap()
        .cluster_id()
        .to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(LocalStore::open(dir.path()).unwrap().cluster_id(), id);
    fs::write(dir.path().join(CLUSTER_ID), "nope\n").unwrap();
    let err = LocalStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("cluster-id") && err.contains("16 hex digits"),
        "{err}"
    );
}

#[test]
fn the_log_compacts_itself_when_long() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open_compacting(dir.path(), 50, 10).unwrap();
    for i in 0..50 {
        put(&s, "k", &i.to_string());
    }
    let state = s.fresh().unwrap();
    assert_eq!(
        (state.revision, state.compacted, state.history.len()),
        (50, 40, 10)
    );
    drop(state);
    let lines = fs::read_to_string(dir.path().join(LOG))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 10);
    let reopened = LocalStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get("k").unwrap().1.unwrap().value, "49");
}
