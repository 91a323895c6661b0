//! Turns a controller Update into the next intent, or into the reasons it is
//! refused. Pure: the whole update is checked before anything is applied, and a
//! refused update leaves the current intent untouched.

use dpu_model::{self as model, Intent, ObjectError};
use dpu_proto::v1 as pb;

use crate::compile::check_supported;

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
pub fn next_intent(
    current: &Intent,
    version: u64,
    update: &pb::Update,
    node: &str,
) -> Result<Intent, Refusal> {
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
    let mut next = if update.snapshot {
        Intent::default()
    } else {
        if update.base_version != version {
            return Err(Refusal::general(
                "update.base_version",
                format!(
                    "update {} applies on top of version {}, but this agent is at {version}; send a snapshot",
                    update.version, update.base_version
                ),
            ));
        }
        current.clone()
    };

    let mut errs = Vec::new();
    for k in &update.deletes {
        match model::kind_from_proto(k.kind) {
            Some(kind) => {
                next.remove(&model::ObjectKey::new(kind, &k.name));
            }
            None => {
                return Err(Refusal::general(
                    "update.deletes",
                    format!("delete of {:?} has no valid kind ({})", k.name, k.kind),
                ))
            }
        }
    }
    for o in &update.upserts {
        match model::object_from_proto(o) {
            Ok(obj) => next.upsert(obj),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        errs = model::validate(&next);
    }
    if errs.is_empty() {
        errs = check_supported(&next, node);
    }
    if errs.is_empty() {
        Ok(next)
    } else {
        Err(Refusal::objects(errs))
    }
}

/// The whole intent as a snapshot Update (what the agent persists).
pub fn snapshot_of(intent: &Intent, version: u64) -> pb::Update {
    pb::Update {
        version,
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
        }
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
        assert!(e.to_string().contains("already used by Vpc/a"), "{e}");
    }
}
