//! The intent in force: the last good manifests merged with the workloads the
//! agents reported, and its version.
//!
//! Changes come from two sides, the intent objects and the agents' reports,
//! both read from the store, and one task applies both (`intenttask`), so
//! versions are committed and published in order. A commit merges, and gives
//! the merged intent the next version if its digest changed
//! (`intent-version.json`): a restart that finds the same objects and the same
//! reports in the store keeps the version.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::merge::merge;
use crate::reload::Manifests;
use crate::reported::{replace_set, ReportedSet, MAX_REPORTED_ERRORS};
use crate::session::Published;
use crate::status::ReportedSummary;
use crate::store::{intent_digest, StoreError, VersionStore};

#[derive(Debug)]
pub struct Effective {
    manifests: Manifests,
    /// Each node's reported set, as the store has it.
    reported: BTreeMap<String, ReportedSet>,
    versions: VersionStore,
    /// Something changed since the last commit.
    stale: bool,
    version: u64,
    summaries: BTreeMap<String, ReportedSummary>,
    /// `<store cluster id>/<version lineage>`: what the versions number.
    store_id: Arc<str>,
}

/// (node, reason) for each reported workload left out of the intent.
pub type Drops = Vec<(String, String)>;

/// What one commit did.
#[derive(Debug)]
pub struct Commit {
    /// The version in force after it.
    pub version: u64,
    /// The new intent, when the version changed.
    pub published: Option<Published>,
    /// Reported workloads dropped now but not before.
    pub newly_dropped: Drops,
}

impl Effective {
    /// Merges `reported` (each node's set, from the store) with `manifests`,
    /// and commits the first version.
    pub fn open(
        manifests: Manifests,
        versions: VersionStore,
        cluster_id: &str,
        reported: BTreeMap<String, ReportedSet>,
    ) -> Result<(Self, Published, Drops), StoreError> {
        let store_id: Arc<str> = format!("{cluster_id}/{}", versions.lineage()).into();
        let mut e = Effective {
            manifests,
            reported: BTreeMap::new(),
            versions,
            stale: true,
            version: 0,
            summaries: BTreeMap::new(),
            store_id,
        };
        for (node, set) in reported {
            e.set_reported(&node, set);
        }
        let commit = e.commit()?;
        let published = commit
            .published
            .expect("the first commit always publishes (version 0 is never committed)");
        Ok((e, published, commit.newly_dropped))
    }

    /// The version in force.
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

    /// Merges and commits the version. A failure to commit the version leaves
    /// the old version in force, and the next commit tries again.
    pub fn commit(&mut self) -> Result<Commit, StoreError> {
        if !self.stale {
            return Ok(Commit {
                version: self.version,
                published: None,
                newly_dropped: Vec::new(),
            });
        }
        let merged = merge(&self.manifests.docs, &self.manifests.intent, &self.reported);
        let version = self.versions.commit(&intent_digest(&merged.intent))?;
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
        let published = (version != self.version).then(|| Published {
            version,
            intent: Arc::new(merged.intent),
            store_id: self.store_id.clone(),
        });
        self.version = version;
        Ok(Commit {
            version,
            published,
            newly_dropped,
        })
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

    fn open(
        dir: &std::path::Path,
        m: Manifests,
        reported: BTreeMap<String, ReportedSet>,
    ) -> (Effective, Published) {
        let versions = VersionStore::open(dir).unwrap();
        let (e, p, _) = Effective::open(m, versions, "0123456789abcdef", reported).unwrap();
        (e, p)
    }

    #[test]
    fn reports_bump_the_version_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut e, p) = open(dir.path(), manifests(""), BTreeMap::new());
        assert_eq!(p.version, 1);
        assert!(!e.needs_commit());

        let set = check_report("dpu-1", &[pod("pod-a", "10.1.1.30")]);
        assert!(e.set_reported("dpu-1", set.clone()));
        let c = e.commit().unwrap();
        assert_eq!(c.version, 2);
        let p = c.published.expect("a new version");
        assert!(p.intent.workloads.contains_key("pod-a"));
        assert_eq!(e.summaries()["dpu-1"].workloads, 1);

        // The same set again changes nothing.
        assert!(!e.set_reported("dpu-1", set));
        assert!(!e.needs_commit());

        // A restart with the same manifests and the stored reports keeps the
        // version, and the pod.
        let stored = e.reported().clone();
        let (e, p) = open(dir.path(), manifests(""), stored.clone());
        assert_eq!(p.version, 2);
        assert!(p.intent.workloads.contains_key("pod-a"));
        assert_eq!(e.summaries()["dpu-1"].workloads, 1);

        // A manifest Workload that takes the pod's name wins; the version moves
        // on and the node's status says why the pod is gone.
        let (mut e, _) = open(dir.path(), manifests(""), stored);
        e.set_manifests(manifests(
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: pod-a}\nspec: {kind: VM, vpc: blue, ip: 10.1.1.50, mac: \"02:00:00:00:09:02\", node: dpu-2, port: x}\n",
        ));
        let c = e.commit().unwrap();
        assert_eq!(c.version, 3);
        let p = c.published.unwrap();
        assert_eq!(p.intent.workloads["pod-a"].node, "dpu-2");
        let s = &e.summaries()["dpu-1"];
        assert_eq!(s.workloads, 0);
        assert!(s.errors[0].contains("the manifest wins"), "{s:?}");
        assert_eq!(c.newly_dropped.len(), 1);
        // Reporting nothing forgets the node.
        assert!(e.set_reported("dpu-1", ReportedSet::default()));
        e.commit().unwrap();
        assert!(e.summaries().is_empty());
    }
}
