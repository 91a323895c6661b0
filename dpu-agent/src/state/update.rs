//! Turns a controller Update into the next intent, or into the reasons it is
//! refused. Pure: the whole update is checked before anything is applied, and a
//! refused update leaves the current intent untouched.

use std::collections::BTreeSet;

use dpu_model::{self as model, Index, Intent, Kind, Object, ObjectError, ObjectKey};
use dpu_proto::v1 as pb;

/// Why an update was refused, ready for a Nack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errors: Vec<pb::ObjectError>,
}

impl Refusal {
    pub fn general(field: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            errors: vec![pb::ObjectError {
                key: None,
                field: field.into(),
                message: message.into(),
            }],
        }
    }

    fn objects(errs: Vec<ObjectError>) -> Refusal {
        Refusal {
            errors: errs.iter().map(model::error_to_proto).collect(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(model::error_text).collect();
        f.write_str(&parts.join("; "))
    }
}

/// At most this many errors go into one NACK (and its log line); the rest are
/// counted in one more. The controller reads at most 4 MiB from an agent, and a
/// refusal that does not arrive helps nobody.
pub const MAX_NACK_ERRORS: usize = 1000;

impl Refusal {
    /// The errors as sent: the first [`MAX_NACK_ERRORS`], then one that counts
    /// the others.
    pub fn capped(mut self) -> Refusal {
        if self.errors.len() > MAX_NACK_ERRORS {
            let more = self.errors.len() - MAX_NACK_ERRORS;
            self.errors.truncate(MAX_NACK_ERRORS);
            self.errors.push(pb::ObjectError {
                key: None,
                field: "update".into(),
                message: format!("and {more} more errors (the first {MAX_NACK_ERRORS} are listed)"),
            });
        }
        self
    }
}

/// Largest number of objects one update may carry.
pub const MAX_OBJECTS_PER_UPDATE: usize = 200_000;

/// Computes the intent after `update`, given the agent's intent at `version`.
/// The reference form of [`apply_update`] (it copies the intent).
pub fn next_intent(
    current: &Intent,
    version: u64,
    update: &pb::Update,
    node: &str,
) -> Result<Intent, Refusal> {
    let mut next = current.clone();
    let mut index = Index::build(&next);
    apply_update(&mut next, &mut index, version, update, node)?;
    Ok(next)
}

/// What [`apply_update`] changed, and how to put it back.
#[derive(Debug)]
pub struct AppliedUpdate {
    /// The objects added, replaced (by a different value) or removed; for a
    /// snapshot, every key of the old and the new intent that differs.
    pub changed: BTreeSet<ObjectKey>,
    pub snapshot: bool,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    Whole(Box<(Intent, Index)>),
    /// The old value of each changed key, in the order they were changed.
    Objects(Vec<(ObjectKey, Option<Object>)>),
}

impl AppliedUpdate {
    /// Puts `intent` and `index` back as they were before the update.
    pub fn undo(self, intent: &mut Intent, index: &mut Index) {
        match self.undo {
            Undo::Whole(old) => (*intent, *index) = *old,
            Undo::Objects(old) => {
                for (key, before) in old.into_iter().rev() {
                    if let Some(now) = intent.take(&key) {
                        index.remove(&now);
                    }
                    if let Some(before) = before {
                        index.add(&before);
                        intent.upsert(before);
                    }
                }
            }
        }
    }
}

/// Applies `update` to `intent` in place (the agent's intent at `version`;
/// `index` is in step with it and stays so), or refuses it and leaves both as
/// they were. An increment changes only the objects it names, and is checked
/// by the fast path (`dpu_model::validate_changes`) first: only when that
/// cannot tell does the whole intent go through
/// `dpu_model::validate_for_node`, which also gives the exact errors. Every
/// rule about the intent is the model's, so the controller, which runs the
/// same rules for every node (`validate_for_every_node`), refuses first what
/// this would refuse.
pub fn apply_update(
    intent: &mut Intent,
    index: &mut Index,
    version: u64,
    update: &pb::Update,
    node: &str,
) -> Result<AppliedUpdate, Refusal> {
    if update.upserts.len() + update.deletes.len() > MAX_OBJECTS_PER_UPDATE {
        return Err(Refusal::general(
            "update",
            format!(
                "{} objects in one update; at most {MAX_OBJECTS_PER_UPDATE}",
                update.upserts.len() + update.deletes.len()
            ),
        ));
    }
    if update.version == 0 {
        return Err(Refusal::general("update.version", "version 0 is reserved"));
    }
    if !update.snapshot && update.base_version != version {
        return Err(Refusal::general(
            "update.base_version",
            format!(
                "update {} applies on top of version {}, but this agent is at {version}; send a snapshot",
                update.version, update.base_version
            ),
        ));
    }
    let mut deletes = Vec::with_capacity(update.deletes.len());
    for k in &update.deletes {
        match model::kind_from_proto(k.kind) {
            Some(kind) => deletes.push(model::ObjectKey::new(kind, &k.name)),
            None => {
                return Err(Refusal::general(
                    "update.deletes",
                    format!("delete of {:?} has no valid kind ({})", k.name, k.kind),
                ))
            }
        }
    }
    let mut errs = Vec::new();
    let mut upserts = Vec::with_capacity(update.upserts.len());
    for o in &update.upserts {
        match model::object_from_proto(o) {
            Ok(obj) => upserts.push(obj),
            Err(e) => errs.push(e),
        }
    }
    if !errs.is_empty() {
        return Err(Refusal::objects(errs));
    }

    if update.snapshot {
        let mut next = Intent::default();
        for k in &deletes {
            next.remove(k);
        }
        for o in upserts {
            next.upsert(o);
        }
        let errs = model::validate_for_node(&next, node);
        if !errs.is_empty() {
            return Err(Refusal::objects(errs));
        }
        let changed = differing_keys(intent, &next);
        let next_index = Index::build(&next);
        let old = (
            std::mem::replace(intent, next),
            std::mem::replace(index, next_index),
        );
        return Ok(AppliedUpdate {
            changed,
            snapshot: true,
            undo: Undo::Whole(Box::new(old)),
        });
    }

    let mut old: Vec<(ObjectKey, Option<Object>)> = Vec::new();
    let mut changed = BTreeSet::new();
    for k in deletes {
        if let Some(before) = intent.take(&k) {
            index.remove(&before);
            changed.insert(k.clone());
            old.push((k, Some(before)));
        }
    }
    for o in upserts {
        let k = o.key();
        let before = intent.take(&k);
        if let Some(b) = &before {
            index.remove(b);
        }
        index.add(&o);
        if before.as_ref() != Some(&o) {
            changed.insert(k.clone());
        }
        intent.upsert(o);
        old.push((k, before));
    }
    let applied = AppliedUpdate {
        changed,
        snapshot: false,
        undo: Undo::Objects(old),
    };
    // The node rules read only workloads, and the fast path judges only
    // changes of Services and probes.
    if !model::validate_changes(intent, index, &applied.changed) {
        let errs = model::validate_for_node(intent, node);
        if !errs.is_empty() {
            applied.undo(intent, index);
            return Err(Refusal::objects(errs));
        }
    }
    Ok(applied)
}

/// The keys whose objects differ between `a` and `b`.
fn differing_keys(a: &Intent, b: &Intent) -> BTreeSet<ObjectKey> {
    fn diff<V: PartialEq>(
        kind: Kind,
        a: &std::collections::BTreeMap<String, V>,
        b: &std::collections::BTreeMap<String, V>,
        out: &mut BTreeSet<ObjectKey>,
    ) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                out.insert(ObjectKey::new(kind, k));
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            out.insert(ObjectKey::new(kind, k));
        }
    }
    let mut out = BTreeSet::new();
    diff(Kind::Vpc, &a.vpcs, &b.vpcs, &mut out);
    diff(Kind::Subnet, &a.subnets, &b.subnets, &mut out);
    diff(Kind::Workload, &a.workloads, &b.workloads, &mut out);
    diff(Kind::Service, &a.services, &b.services, &mut out);
    diff(Kind::NetworkProbe, &a.probes, &b.probes, &mut out);
    diff(Kind::Node, &a.nodes, &b.nodes, &mut out);
    out
}

/// `Update.upserts`' and `Update.store_id`'s field numbers
/// (`proto/dpu/v1/control.proto`).
const UPSERTS_TAG: u32 = 5;
const STORE_ID_TAG: u32 = 7;

/// The whole intent as an encoded snapshot Update, what the agent persists:
/// the bytes of [`snapshot_of`]'s `encode_to_vec()`, written one object at a
/// time. Building the whole message first would copy the intent as many small
/// allocations and free them at once, right after the cold snapshot's
/// compile: holes among the state that stays, which the allocator cannot
/// give back (docs/agent.md, "Memory: where it goes").
pub fn encode_snapshot(intent: &Intent, version: u64, store_id: &str) -> Vec<u8> {
    use prost::Message;
    let head = pb::Update {
        version,
        snapshot: true,
        ..Default::default()
    };
    let mut buf = head.encode_to_vec();
    for o in intent.objects() {
        prost::encoding::message::encode(UPSERTS_TAG, &model::object_to_proto(&o), &mut buf);
    }
    // After the upserts, in field order, as prost writes the whole message.
    if !store_id.is_empty() {
        prost::encoding::string::encode(STORE_ID_TAG, &store_id.to_string(), &mut buf);
    }
    buf
}

/// The whole intent as a snapshot Update.
pub fn snapshot_of(intent: &Intent, version: u64, store_id: &str) -> pb::Update {
    pb::Update {
        version,
        store_id: store_id.to_string(),
        nonce: String::new(),
        snapshot: true,
        base_version: 0,
        upserts: intent
            .objects()
            .map(|o| model::object_to_proto(&o))
            .collect(),
        deletes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nack_carries_at_most_a_thousand_errors_and_counts_the_rest() {
        let many = Refusal {
            errors: (0..5000)
                .map(|i| pb::ObjectError {
                    key: None,
                    field: format!("f{i}"),
                    message: "bad".into(),
                })
                .collect(),
        }
        .capped();
        assert_eq!(many.errors.len(), MAX_NACK_ERRORS + 1);
        assert_eq!(many.errors[999].field, "f999");
        assert!(many.errors[1000]
            .message
            .starts_with("and 4000 more errors"));
        let few = Refusal::general("switch", "x").capped();
        assert_eq!(few.errors.len(), 1);
    }

    fn vpc(name: &str, vni: u32) -> pb::Object {
        pb::Object {
            object: Some(pb::object::Object::Vpc(pb::Vpc {
                name: name.into(),
                vni,
            })),
        }
    }

    fn update(version: u64, base: u64, snapshot: bool, upserts: Vec<pb::Object>) -> pb::Update {
        pb::Update {
            version,
            nonce: "n".into(),
            snapshot,
            base_version: base,
            upserts,
            deletes: vec![],
            store_id: String::new(),
        }
    }

    #[test]
    fn the_streamed_snapshot_is_the_snapshot_message_encoded() {
        use prost::Message;
        let intent = next_intent(
            &Intent::default(),
            0,
            &update(4, 0, true, vec![vpc("b", 11), vpc("a", 10), vpc("c", 12)]),
            "n1",
        )
        .unwrap();
        assert_eq!(intent.objects().count(), 3);
        let streamed = encode_snapshot(&intent, 4, "");
        assert_eq!(streamed, snapshot_of(&intent, 4, "").encode_to_vec());
        let streamed = encode_snapshot(&intent, 4, "c0ffee/1234");
        assert_eq!(
            streamed,
            snapshot_of(&intent, 4, "c0ffee/1234").encode_to_vec()
        );
        let back = pb::Update::decode(streamed.as_slice()).unwrap();
        assert_eq!(
            (back.version, back.snapshot, back.upserts.len()),
            (4, true, 3)
        );
        assert_eq!(
            encode_snapshot(&Intent::default(), 9, "s"),
            snapshot_of(&Intent::default(), 9, "s").encode_to_vec()
        );
    }

    #[test]
    fn snapshot_replaces_and_increments_apply_on_top() {
        let i = next_intent(
            &Intent::default(),
            0,
            &update(1, 0, true, vec![vpc("a", 1)]),
            "n1",
        )
        .unwrap();
        let i = next_intent(&i, 1, &update(2, 1, false, vec![vpc("b", 2)]), "n1").unwrap();
        assert_eq!(i.vpcs.len(), 2);
        let i = next_intent(&i, 2, &update(3, 0, true, vec![vpc("c", 3)]), "n1").unwrap();
        assert_eq!(i.vpcs.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn an_increment_on_the_wrong_base_is_refused() {
        let e = next_intent(&Intent::default(), 4, &update(6, 5, false, vec![]), "n1").unwrap_err();
        assert_eq!(e.errors[0].field, "update.base_version");
    }

    #[test]
    fn one_bad_object_refuses_the_whole_update() {
        let cur = next_intent(
            &Intent::default(),
            0,
            &update(1, 0, true, vec![vpc("a", 1)]),
            "n1",
        )
        .unwrap();
        let e = next_intent(
            &cur,
            1,
            &update(2, 1, false, vec![vpc("b", 2), vpc("c", 0)]),
            "n1",
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].field, "spec.vni");
        assert_eq!(e.errors[0].key.as_ref().map(|k| k.name.as_str()), Some("c"));
        // Duplicate VNI is a cross-object error.
        let e = next_intent(&cur, 1, &update(2, 1, false, vec![vpc("b", 1)]), "n1").unwrap_err();
        assert!(
            e.to_string()
                .contains("is also the VNI of Vpc/a (spec.vni)"),
            "{e}"
        );
    }
}
