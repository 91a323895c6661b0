//! The intent in force: the intent objects merged with the workloads the
//! agents reported, and its version.
//!
//! Both come from the store, and one task applies both (`intenttask`), so
//! versions are decided and published in order. A commit merges; when the
//! merged intent's digest differs from the one in force it waits, pending, for
//! its version, which `intenttask` takes from the store (the revision of the
//! leader's write of `meta/version`), so every replica gives the same intent
//! the same version.

use std::collections::BTreeMap;
use std::sync::Arc;

use dpu_model::Intent;

use crate::manifest::Doc;
use crate::merge::merge;
use crate::reload::Manifests;
use crate::reported::{replace_set, ReportedSet, MAX_REPORTED_ERRORS};
use crate::session::Published;
use crate::status::ReportedSummary;
use crate::store::intent_digest;

#[derive(Debug)]
pub struct Effective {
    manifests: Manifests,
    /// Each node's reported set, as the store has it.
    reported: BTreeMap<String, ReportedSet>,
    /// Something changed since the last commit.
    stale: bool,
    /// The version in force and its intent's digest (0 and "" before the first).
    version: u64,
    digest: String,
    /// A merged intent that differs from the one in force, with its digest,
    /// waiting for its version.
    pending: Option<(String, Arc<Intent>)>,
    summaries: BTreeMap<String, ReportedSummary>,
    /// What the versions number (`Update.store_id`): the store's cluster id.
    store_id: Arc<str>,
    /// The intent in force, for the next version's base.
    in_force: Option<Arc<Intent>>,
    /// The documents and the result of the last merge, which the next one
    /// reuses what it can of.
    last_merge: Option<(Arc<Vec<Doc>>, Arc<Intent>)>,
}

/// (node, reason) for each reported workload left out of the intent.
pub type Drops = Vec<(String, String)>;

/// What one commit did.
#[derive(Debug, Default)]
pub struct Commit {
    /// Reported workloads dropped now but not before.
    pub newly_dropped: Drops,
}

impl Effective {
    /// `manifests` (the store's objects, resolved) and `reported` (each node's
    /// set, from the store); nothing is merged until [`Effective::commit`].
    pub fn new(
        manifests: Manifests,
        cluster_id: &str,
        reported: BTreeMap<String, ReportedSet>,
    ) -> Self {
        let mut e = Effective {
            manifests,
            reported: BTreeMap::new(),
            stale: true,
            version: 0,
            digest: String::new(),
            pending: None,
            summaries: BTreeMap::new(),
            store_id: format!("{cluster_id}/rev").into(),
            in_force: None,
            last_merge: None,
        };
        for (node, set) in reported {
            e.set_reported(&node, set);
        }
        e
    }

    /// The version in force (0 before the first is published).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Per node that reported: workloads in force and why others are not.
    pub fn summaries(&self) -> &BTreeMap<String, ReportedSummary> {
        &self.summaries
    }

    /// The manifests in force (the store's objects, resolved).
    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    pub fn set_manifests(&mut self, manifests: Manifests) {
        self.manifests = manifests;
        self.stale = true;
    }

    /// Makes `set` the node's reported set; false if nothing changed.
    pub fn set_reported(&mut self, node: &str, set: ReportedSet) -> bool {
        let changed = replace_set(&mut self.reported, node, set);
        self.stale |= changed;
        changed
    }

    /// Each node's reported set in force.
    pub fn reported(&self) -> &BTreeMap<String, ReportedSet> {
        &self.reported
    }

    /// Whether `commit` has anything to do.
    pub fn needs_commit(&self) -> bool {
        self.stale
    }

    /// The digest of a merged intent waiting for its version.
    pub fn pending_digest(&self) -> Option<&str> {
        self.pending.as_ref().map(|(d, _)| d.as_str())
    }

    /// Puts the pending intent in force at `version`.
    pub fn publish(&mut self, version: u64) -> Option<Published> {
        let (digest, intent) = self.pending.take()?;
        let base = (self.version, self.in_force.replace(intent.clone()));
        self.version = version;
        self.digest = digest;
        let p = Published::new(version, intent, self.store_id.clone());
        Some(match base {
            (v, Some(old)) if v != 0 => p.after(v, old),
            _ => p,
        })
    }

    /// Merges. An intent that differs from the one in force becomes pending
    /// (see [`Effective::publish`]); one that is the same again (a change
    /// undone) drops what was pending.
    pub fn commit(&mut self) -> Commit {
        if !self.stale {
            return Commit::default();
        }
        let previous = self
            .last_merge
            .as_ref()
            .map(|(docs, intent)| (docs.as_slice(), &**intent));
        let merged = merge(
            &self.manifests.docs,
            &self.manifests.intent,
            &self.reported,
            previous,
        );
        self.last_merge = Some((self.manifests.docs.clone(), merged.intent.clone()));
        let digest = intent_digest(&merged.intent);
        self.stale = false;

        let mut summaries = BTreeMap::new();
        let mut newly_dropped = Vec::new();
        for (node, m) in merged.nodes {
            let before = self.summaries.get(&node);
            for reason in &m.dropped {
                if !before.is_some_and(|b| b.errors.contains(reason)) {
                    newly_dropped.push((node.clone(), reason.clone()));
                }
            }
            let mut errors = self
                .reported
                .get(&node)
                .map(|s| s.errors.clone())
                .unwrap_or_default();
            errors.extend(m.dropped);
            if errors.len() > MAX_REPORTED_ERRORS {
                let more = errors.len() - MAX_REPORTED_ERRORS;
                errors.truncate(MAX_REPORTED_ERRORS);
                errors.push(format!("... and {more} more"));
            }
            let summary = ReportedSummary {
                workloads: m.accepted,
                errors,
            };
            summaries.insert(node, summary);
        }
        self.summaries = summaries;
        self.pending = (digest != self.digest).then_some((digest, merged.intent));
        Commit { newly_dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_file;
    use crate::reported::check_report;
    use dpu_proto::v1 as pb;

    fn manifests(extra: &str) -> Manifests {
        let mut docs = crate::manifest::good_sample_docs("");
        docs.extend(parse_file("40.yaml", extra).unwrap());
        Manifests::resolve(docs).unwrap()
    }

    fn pod(name: &str, ip: &str) -> pb::Workload {
        pb::Workload {
            name: name.into(),
            kind: pb::WorkloadKind::Pod as i32,
            vpc: "blue".into(),
            ip: ip.into(),
            ipv6: String::new(),
            mac: "02:00:00:00:09:01".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: "dpu-1".into(),
            port: format!("{name}-eth0"),
        }
    }

    /// An Effective with its first version published at `version`.
    fn open(
        m: Manifests,
        reported: BTreeMap<String, ReportedSet>,
        version: u64,
    ) -> (Effective, Published) {
        let mut e = Effective::new(m, "0123456789abcdef", reported);
        e.commit();
        let p = e.publish(version).expect("the first commit is pending");
        (e, p)
    }

    #[test]
    fn reports_change_the_intent_and_an_unchanged_one_keeps_its_version() {
        let (mut e, p) = open(manifests(""), BTreeMap::new(), 7);
        assert_eq!((p.version, &*p.store_id), (7, "0123456789abcdef/rev"));
        assert!(!e.needs_commit());

        let set = check_report("dpu-1", &[pod("pod-a", "10.1.1.30")]);
        assert!(e.set_reported("dpu-1", set.clone()));
        e.commit();
        let digest = e.pending_digest().expect("a new intent").to_string();
        let p = e.publish(12).unwrap();
        assert!(p.intent.workloads.contains_key("pod-a"));
        assert_eq!((e.version(), e.summaries()["dpu-1"].workloads), (12, 1));

        // The same set again changes nothing.
        assert!(!e.set_reported("dpu-1", set.clone()));
        assert!(!e.needs_commit());

        // A change undone before it got its version leaves nothing pending.
        assert!(e.set_reported("dpu-1", ReportedSet::default()));
        e.commit();
        assert!(e.pending_digest().is_some());
        assert!(e.set_reported("dpu-1", set));
        e.commit();
        assert_eq!(e.pending_digest(), None);
        assert_eq!(e.version(), 12);

        // The same objects and reports (a restart, another replica) give the
        // same digest, so the version the store holds for it.
        let stored = e.reported().clone();
        let mut again = Effective::new(manifests(""), "0123456789abcdef", stored.clone());
        again.commit();
        assert_eq!(again.pending_digest(), Some(digest.as_str()));

        // A manifest Workload that takes the pod's name wins; the node's
        // status says why the pod is gone.
        let (mut e, _) = open(manifests(""), stored, 12);
        e.set_manifests(manifests(
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: pod-a}\nspec: {kind: VM, vpc: blue, ip: 10.1.1.50, mac: \"02:00:00:00:09:02\", node: dpu-2, port: x}\n",
        ));
        let c = e.commit();
        let p = e.publish(13).unwrap();
        assert_eq!(p.intent.workloads["pod-a"].node, "dpu-2");
        let s = &e.summaries()["dpu-1"];
        assert_eq!(s.workloads, 0);
        assert!(s.errors[0].contains("the manifest wins"), "{s:?}");
        assert_eq!(c.newly_dropped.len(), 1);
        // Reporting nothing forgets the node.
        assert!(e.set_reported("dpu-1", ReportedSet::default()));
        e.commit();
        assert!(e.summaries().is_empty());
    }
}
