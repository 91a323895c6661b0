//! Manifest documents into one validated `Intent`.
//!
//! Each document becomes a proto object, and the model's own edge
//! (`object_from_proto`) applies the field rules, so the controller and the agent
//! accept exactly the same values. Services get their backends here: selectors
//! are evaluated over Workloads and merged with explicit backends. Once every
//! object passes its field rules, `dpu_model::validate_for_every_node` runs the
//! cross-object rules over the whole set, with the rules each node's agent
//! applies to its own workloads (a MAC to bind their port by): what an agent
//! would refuse of its share, the controller refuses first. Every error is
//! mapped back to the file, document, object and manifest field it came from; a
//! conflict of two objects (the same VIP:port, address, VNI, ...) names both,
//! each with its file.
//!
//! `resolve_with` also takes workloads that did not come from a manifest (the pods
//! agents report, see `merge`): they join the Workloads before any selector is
//! evaluated, so Services select them exactly like declared ones, and the
//! cross-object rules run over the union.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use dpu_model::{
    object_from_proto, validate_for_every_node, Intent, Kind, Object, ObjectError, ObjectKey,
    Workload,
};
use dpu_proto::v1 as pb;

use crate::diag::{IntentError, Source};
use crate::manifest::*;

const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const DEFAULT_PERIOD_SECONDS: u32 = 10;
const DEFAULT_TIMEOUT_SECONDS: u32 = 1;
const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// How an error about a backend that a selector added begins its message (then
/// the workload's name, a colon, the model's message). `merge` reads it back.
pub const SELECTED: &str = "selected Workload/";

/// Where each backend of a resolved Service came from, by its index in the
/// resolved (sorted) list: `spec.backends[j]` or the selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Explicit(usize),
    Selector(String),
}

struct Located<'a> {
    doc: &'a Doc,
    origins: Vec<Origin>,
}

/// Resolves and validates a whole set of documents (all files of the intent dir).
pub fn resolve(docs: &[Doc]) -> Result<Intent, Vec<IntentError>> {
    resolve_with(docs, &[])
}

/// [`resolve`], knowing the intent the last good manifests resolved to: a
/// conflict between an object that is the same there and one that is new or
/// changed is reported at the new one (its file, object and field), naming the
/// untouched one and its file. Without `previous`, or when both or neither
/// changed, the model's choice stands (the name that sorts later).
pub fn resolve_since(docs: &[Doc], previous: Option<&Intent>) -> Result<Intent, Vec<IntentError>> {
    resolve_inner(docs, &[], previous, None)
}

/// At most this many Workloads changed since the last good resolve for
/// [`resolve_after`] to reuse what it can; more, and everything is resolved
/// again (checking each Service against each changed Workload would cost more).
const REUSE_MAX_CHANGED: usize = 256;

/// [`resolve_since`] after a good resolve of `previous_docs` to `previous`:
/// what cannot have changed is taken from `previous` rather than built again.
/// An object whose document is the same (kind, name, labels, spec) is reused;
/// a Service is reused too when no Workload it could select or names (old or
/// new) changed. The result is the same as resolving everything: the
/// cross-object rules still run over the whole intent, and any error at all
/// resolves everything again, so errors are exactly [`resolve_since`]'s. A
/// change costs the objects it touches, not the whole intent.
pub fn resolve_after(
    docs: &[Doc],
    previous_docs: &[Doc],
    previous: &Intent,
) -> Result<Intent, Vec<IntentError>> {
    match resolve_inner(docs, &[], Some(previous), Some((previous_docs, previous))) {
        Ok(intent) => Ok(intent),
        Err(_) => resolve_inner(docs, &[], Some(previous), None),
    }
}

/// [`resolve_with`] after a good merge of `previous_docs` (with the extra
/// Workloads of then) to `previous`, reusing what did not change as
/// [`resolve_after`] does: the same result and errors.
pub fn resolve_with_after(
    docs: &[Doc],
    extra: &[Workload],
    previous_docs: &[Doc],
    previous: &Intent,
) -> Result<Intent, Vec<IntentError>> {
    match resolve_inner(docs, extra, None, Some((previous_docs, previous))) {
        Ok(intent) => Ok(intent),
        Err(_) => resolve_inner(docs, extra, None, None),
    }
}

/// Resolves the documents together with `extra` Workloads that come from
/// elsewhere and already passed their field rules. Selectors see them like any
/// declared Workload, and the cross-object rules run over the union. Errors about
/// an extra workload name it (`Workload/name`) without a file. An extra workload
/// may not take the name of a declared one; explicit `backends[].workload`
/// references still name declared Workloads only.
pub fn resolve_with(docs: &[Doc], extra: &[Workload]) -> Result<Intent, Vec<IntentError>> {
    resolve_inner(docs, extra, None, None)
}

/// The last good resolve: its documents and the intent they gave.
type Reuse<'a> = (&'a [Doc], &'a Intent);

fn resolve_inner(
    docs: &[Doc],
    extra: &[Workload],
    previous: Option<&Intent>,
    reuse: Option<Reuse<'_>>,
) -> Result<Intent, Vec<IntentError>> {
    let before: HashMap<(Kind, &str), &Doc> = reuse
        .map(|(docs, _)| {
            docs.iter()
                .map(|d| ((d.kind, d.name.as_str()), d))
                .collect()
        })
        .unwrap_or_default();
    let unchanged = |key: &ObjectKey, doc: &Doc| {
        before
            .get(&(key.kind, key.name.as_str()))
            .is_some_and(|b| b.labels == doc.labels && b.spec == doc.spec)
    };
    let mut errors = Vec::new();
    let mut located: BTreeMap<ObjectKey, Located<'_>> = BTreeMap::new();
    for doc in docs {
        let key = ObjectKey::new(doc.kind, &doc.name);
        if let Some(first) = located.get(&key) {
            errors.push(IntentError::at(
                &doc.source,
                Some(doc.object()),
                Some("metadata.name".into()),
                format!(
                    "{} is defined twice: here and in {} (document {})",
                    doc.object(),
                    first.doc.source.file,
                    first.doc.source.document
                ),
            ));
            continue;
        }
        located.insert(
            key,
            Located {
                doc,
                origins: Vec::new(),
            },
        );
    }

    // Field rules for everything but Services, which need the Workloads first.
    let mut intent = Intent::default();
    let declared_workloads: BTreeSet<String> = located
        .keys()
        .filter(|k| k.kind == Kind::Workload)
        .map(|k| k.name.clone())
        .collect();
    for (key, loc) in located.iter().filter(|(_, l)| l.doc.kind != Kind::Service) {
        if let Some((_, prev)) = reuse.filter(|_| unchanged(key, loc.doc)) {
            if copy_object(prev, key, &mut intent) {
                continue;
            }
        }
        match object_from_proto(&plain_object(loc.doc)) {
            Ok(o) => intent.upsert(o),
            Err(e) => errors.push(map_error(&e, loc)),
        }
    }
    for w in extra {
        if declared_workloads.contains(&w.name) || intent.workloads.contains_key(&w.name) {
            errors.push(IntentError::unsourced(
                format!("Workload/{}", w.name),
                "metadata.name",
                "another Workload has this name",
            ));
            continue;
        }
        intent.upsert(Object::Workload(w.clone()));
    }
    let changed = reuse.and_then(|(_, prev)| changed_workloads(prev, &intent));
    let mut service_origins = BTreeMap::new();
    // Built when a Service is first resolved (with reuse, maybe never).
    let mut labels: Option<LabelIndex> = None;
    for (key, loc) in located.iter().filter(|(_, l)| l.doc.kind == Kind::Service) {
        let Spec::Service(spec) = &loc.doc.spec else {
            continue;
        };
        if let (Some((_, prev)), Some(changed)) = (reuse, &changed) {
            let untouched = || !changed.iter().any(|w| touches(spec, w));
            if unchanged(key, loc.doc) && untouched() && copy_object(prev, key, &mut intent) {
                continue;
            }
        }
        let labels = labels.get_or_insert_with(|| LabelIndex::build(&intent.workloads));
        let backends = match resolve_backends(
            spec,
            &intent.workloads,
            labels,
            &declared_workloads,
            &loc.doc.source,
        ) {
            Ok(b) => b,
            Err(mut es) => {
                for e in &mut es {
                    e.object = Some(loc.doc.object());
                }
                errors.extend(es);
                continue;
            }
        };
        let (pb_backends, origins): (Vec<_>, Vec<_>) = backends.into_iter().unzip();
        let proto = pb::Object {
            object: Some(pb::object::Object::Service(service_proto(
                &loc.doc.name,
                spec,
                pb_backends,
            ))),
        };
        let with_origins = Located {
            doc: loc.doc,
            origins,
        };
        match object_from_proto(&proto) {
            Ok(o) => intent.upsert(o),
            Err(e) => errors.push(map_error(&e, &with_origins)),
        }
        service_origins.insert(ObjectKey::new(Kind::Service, &loc.doc.name), with_origins);
    }
    for (k, v) in service_origins {
        located.insert(k, v);
    }

    // Cross-object rules only make sense once every object is well-formed.
    if errors.is_empty() {
        for e in validate_for_every_node(&intent) {
            let e = match (previous, e.flipped()) {
                (Some(prev), Some(flipped)) if is_newer(prev, &intent, &flipped, &e) => flipped,
                _ => e,
            };
            errors.push(locate(&e, &located));
        }
    }
    if errors.is_empty() {
        Ok(intent)
    } else {
        errors.sort();
        Err(errors)
    }
}

/// Puts `previous`'s object `key` into `intent` (shared, not copied, for
/// Workloads and Services); false if `previous` has none.
fn copy_object(previous: &Intent, key: &ObjectKey, intent: &mut Intent) -> bool {
    fn copy<T: Clone>(
        from: &BTreeMap<String, T>,
        name: &str,
        to: &mut BTreeMap<String, T>,
    ) -> bool {
        from.get(name)
            .map(|o| to.insert(name.to_string(), o.clone()))
            .is_some()
    }
    let name = key.name.as_str();
    match key.kind {
        Kind::Vpc => copy(&previous.vpcs, name, &mut intent.vpcs),
        Kind::Subnet => copy(&previous.subnets, name, &mut intent.subnets),
        Kind::Workload => copy(&previous.workloads, name, &mut intent.workloads),
        Kind::Service => copy(&previous.services, name, &mut intent.services),
        Kind::NetworkProbe => copy(&previous.probes, name, &mut intent.probes),
        Kind::Node => copy(&previous.nodes, name, &mut intent.nodes),
    }
}

/// The Workloads that differ between `previous` and `now` (added, removed or
/// changed; both versions of a changed one), or None past
/// [`REUSE_MAX_CHANGED`].
fn changed_workloads(previous: &Intent, now: &Intent) -> Option<Vec<std::sync::Arc<Workload>>> {
    let mut out = Vec::new();
    let differs = |a: &std::sync::Arc<Workload>, b: Option<&std::sync::Arc<Workload>>| {
        b.is_none_or(|b| !std::sync::Arc::ptr_eq(a, b) && a != b)
    };
    for (name, w) in &now.workloads {
        if differs(w, previous.workloads.get(name)) {
            out.push(w.clone());
            out.extend(previous.workloads.get(name).cloned());
        }
    }
    for (name, w) in &previous.workloads {
        if !now.workloads.contains_key(name) {
            out.push(w.clone());
        }
    }
    (out.len() <= REUSE_MAX_CHANGED).then_some(out)
}

/// Whether the Service's backends can depend on `w`: its selector picks it,
/// or an explicit backend names it.
fn touches(spec: &ServiceSpec, w: &Workload) -> bool {
    selects(spec, w)
        || spec
            .backends
            .iter()
            .any(|b| b.workload.as_deref() == Some(w.name.as_str()))
}

/// Whether `new`'s object changed since `previous` (or is new there) while
/// `old`'s did not: then `new` is the one to show the conflict at.
fn is_newer(previous: &Intent, now: &Intent, new: &ObjectError, old: &ObjectError) -> bool {
    let same = |k: &ObjectKey| previous.get(k).is_some() && previous.get(k) == now.get(k);
    !same(&new.key) && same(&old.key)
}

/// A model error with its source, when a document holds its object; a
/// conflict names the other object's file too.
fn locate(e: &ObjectError, located: &BTreeMap<ObjectKey, Located<'_>>) -> IntentError {
    let mut out = match located.get(&e.key) {
        Some(loc) => map_error(e, loc),
        None => IntentError::unsourced(e.key.to_string(), &e.field, &e.message),
    };
    if let Some(other) = e.other.as_deref() {
        // The model names the other side as `Kind/name (field)`; give its file
        // and document, and its field in manifest terms.
        let named = format!("{} ({})", other.key, other.field);
        let placed = match located.get(&other.key) {
            Some(loc) => {
                let field = map_error(other, loc).field.unwrap_or_default();
                format!(
                    "{} ({}, document {}, {field})",
                    loc.doc.object(),
                    loc.doc.source.file,
                    loc.doc.source.document
                )
            }
            None => format!("{} ({}, reported by an agent)", other.key, other.field),
        };
        out.message = out.message.replacen(&named, &placed, 1);
    }
    out
}

/// Attaches the source to a model error and rewrites the field into manifest
/// terms: backend indexes point at the manifest entry or the selector, and probe
/// times are named as the manifest spells them (seconds).
fn map_error(e: &ObjectError, loc: &Located<'_>) -> IntentError {
    let mut field = e.field.clone();
    let mut message = e.message.clone();
    if let Some(rest) = field.strip_prefix("spec.backends[") {
        if let Some((idx, tail)) = rest.split_once(']') {
            match idx.parse::<usize>().ok().and_then(|i| loc.origins.get(i)) {
                Some(Origin::Explicit(j)) => field = format!("spec.backends[{j}]{tail}"),
                Some(Origin::Selector(w)) => {
                    field = "spec.selector".into();
                    message = format!("{SELECTED}{w}: {message}");
                }
                None => {}
            }
        }
    }
    if loc.doc.kind == Kind::NetworkProbe {
        let renamed = match field.as_str() {
            "spec.periodMs" => Some("spec.periodSeconds"),
            "spec.timeoutMs" => Some("spec.timeoutSeconds"),
            _ => None,
        };
        if let Some(r) = renamed {
            field = r.into();
            message = format!("{message} (the manifest gives seconds)");
        }
    }
    IntentError::at(
        &loc.doc.source,
        Some(loc.doc.object()),
        Some(field),
        message,
    )
}

/// The proto object of a non-Service document.
fn plain_object(doc: &Doc) -> pb::Object {
    use pb::object::Object as O;
    let name = doc.name.clone();
    let inner = match &doc.spec {
        Spec::Vpc(s) => O::Vpc(pb::Vpc { name, vni: s.vni }),
        Spec::Subnet(s) => O::Subnet(pb::Subnet {
            name,
            vpc: s.vpc.clone(),
            cidr: s.cidr.clone(),
            gateway: s.gateway.clone(),
            node_blocks: s
                .node_blocks
                .iter()
                .map(|b| pb::NodeBlock {
                    node: b.node.clone(),
                    cidr: b.cidr.clone(),
                })
                .collect(),
        }),
        Spec::Workload(s) => O::Workload(pb::Workload {
            name,
            kind: match s.kind {
                WorkloadKindSpec::Pod => pb::WorkloadKind::Pod,
                WorkloadKindSpec::Vm => pb::WorkloadKind::Vm,
                WorkloadKindSpec::BareMetal => pb::WorkloadKind::BareMetal,
                WorkloadKindSpec::VnicIp => pb::WorkloadKind::VnicIp,
            } as i32,
            vpc: s.vpc.clone(),
            ip: s.ip.clone(),
            ipv6: s.ipv6.clone().unwrap_or_default(),
            mac: s.mac.clone().unwrap_or_default(),
            labels: doc
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            node: s.node.clone(),
            port: s.port.clone(),
        }),
        Spec::Probe(s) => O::NetworkProbe(pb::NetworkProbe {
            name,
            service: s.service.clone(),
            r#type: match s.probe_type {
                ProbeTypeSpec::Tcp => pb::ProbeType::Tcp,
                ProbeTypeSpec::Http => pb::ProbeType::Http,
            } as i32,
            port: s.port,
            http_path: s.http_path.clone().unwrap_or_default(),
            http_status_min: s.http_status_min.unwrap_or_default(),
            http_status_max: s.http_status_max.unwrap_or_default(),
            period_ms: s
                .period_seconds
                .unwrap_or(DEFAULT_PERIOD_SECONDS)
                .saturating_mul(1000),
            timeout_ms: s
                .timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                .saturating_mul(1000),
            success_threshold: s.success_threshold.unwrap_or(DEFAULT_SUCCESS_THRESHOLD),
            failure_threshold: s.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD),
        }),
        // Services are built by `service_proto` once backends are resolved.
        Spec::Node(s) => O::Node(pb::Node {
            name,
            tunnel_ip: s.tunnel_ip.clone(),
            host_ip: s.host_ip.clone().unwrap_or_default(),
            host_mac: s.host_mac.clone().unwrap_or_default(),
        }),
        Spec::Service(_) => return pb::Object { object: None },
    };
    pb::Object {
        object: Some(inner),
    }
}

fn service_proto(name: &str, s: &ServiceSpec, backends: Vec<pb::Backend>) -> pb::Service {
    pb::Service {
        name: name.to_string(),
        vpc: s.vpc.clone(),
        cluster_ips: s.cluster_ips.clone(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: match p.protocol.unwrap_or(ProtocolSpec::Tcp) {
                    ProtocolSpec::Tcp => pb::Protocol::Tcp,
                    ProtocolSpec::Udp => pb::Protocol::Udp,
                    ProtocolSpec::Sctp => pb::Protocol::Sctp,
                } as i32,
                port: p.port,
                target_port: p.target_port.unwrap_or(p.port),
            })
            .collect(),
        backends,
        session_affinity: match &s.session_affinity {
            Some(a) if a.affinity == AffinityType::ClientIp => Some(pb::SessionAffinity {
                timeout_seconds: a.timeout_seconds.unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
            }),
            _ => None,
        },
        eip: s.eip.clone().unwrap_or_default(),
        eip_node: s.eip_node.clone().unwrap_or_default(),
        scenario: match s.scenario.unwrap_or(ScenarioSpec::ClusterIp) {
            ScenarioSpec::ClusterIp => pb::AccessScenario::ClusterIp,
            ScenarioSpec::NodeClusterIp => pb::AccessScenario::NodeClusterIp,
            ScenarioSpec::EipLoadBalancer => pb::AccessScenario::EipLoadBalancer,
            ScenarioSpec::EipServiceGateway => pb::AccessScenario::EipServiceGateway,
        } as i32,
        external_traffic_local: s.external_traffic_policy == Some(TrafficPolicySpec::Local),
    }
}

/// Whether the Service's selector picks `w`: every selector pair among its labels,
/// and the same VPC, except for a service gateway (`EIPServiceGateway`), whose
/// selector spans every VPC. An absent or empty selector selects nothing.
pub fn selects(spec: &ServiceSpec, w: &Workload) -> bool {
    !spec.selector.is_empty()
        && (w.vpc == spec.vpc || is_gateway(spec))
        && spec
            .selector
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
}

fn is_gateway(spec: &ServiceSpec) -> bool {
    spec.scenario == Some(ScenarioSpec::EipServiceGateway)
}

/// The Workloads by label pair, each list in name order, once per VPC and once
/// across VPCs. A selector picks only Workloads that have every one of its
/// pairs (in its own VPC, unless it is a service gateway's), so its candidates
/// are those of its rarest pair there: a Service costs the Workloads of its VPC
/// that share its labels, not every Workload with those labels.
struct LabelIndex {
    in_vpc: HashMap<String, Pairs>,
    any_vpc: Pairs,
}

type Pairs = HashMap<(String, String), Vec<std::sync::Arc<Workload>>>;

impl LabelIndex {
    fn build(workloads: &BTreeMap<String, std::sync::Arc<Workload>>) -> Self {
        let mut ix = LabelIndex {
            in_vpc: HashMap::new(),
            any_vpc: HashMap::new(),
        };
        for w in workloads.values() {
            let vpc = ix.in_vpc.entry(w.vpc.clone()).or_default();
            for (k, v) in &w.labels {
                let pair = (k.clone(), v.clone());
                vpc.entry(pair.clone()).or_default().push(w.clone());
                ix.any_vpc.entry(pair).or_default().push(w.clone());
            }
        }
        ix
    }

    /// The Workloads that may match `spec`'s selector, in name order.
    fn candidates(&self, spec: &ServiceSpec) -> &[std::sync::Arc<Workload>] {
        let pairs = if is_gateway(spec) {
            Some(&self.any_vpc)
        } else {
            self.in_vpc.get(&spec.vpc)
        };
        let Some(pairs) = pairs else {
            return &[];
        };
        spec.selector
            .iter()
            .map(|(k, v)| {
                pairs
                    .get(&(k.clone(), v.clone()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|c| c.len())
            .unwrap_or(&[])
    }
}

/// A backend on its way into the resolved list.
struct Pending {
    ip: String,
    vpc: String,
    weight: u32,
    workload: Option<String>,
    origin: Origin,
}

/// Evaluates the selector over `workloads` (which passed their field rules) and
/// merges in the explicit backends. An explicit `workload` sets the weight of
/// that workload's backend (adding it if the selector missed it); an explicit
/// `ip` adds a backend, or sets the weight of the selected workload with that IP.
/// The result is sorted by IP so that the same intent always gives the same list.
fn resolve_backends(
    spec: &ServiceSpec,
    workloads: &BTreeMap<String, std::sync::Arc<Workload>>,
    labels: &LabelIndex,
    declared: &BTreeSet<String>,
    source: &Source,
) -> Result<Vec<(pb::Backend, Origin)>, Vec<IntentError>> {
    let mut errors = Vec::new();
    let err = |field: String, msg: String| IntentError::at(source, None, Some(field), msg);
    let mut pending: Vec<Pending> = Vec::new();
    for w in labels.candidates(spec).iter().filter(|w| selects(spec, w)) {
        pending.push(Pending {
            ip: w.ip.to_string(),
            vpc: w.vpc.clone(),
            weight: 1,
            workload: Some(w.name.clone()),
            origin: Origin::Selector(w.name.clone()),
        });
    }
    for (j, b) in spec.backends.iter().enumerate() {
        let at = format!("spec.backends[{j}]");
        let weight = b.weight.unwrap_or(1);
        let (ip, vpc, workload) = match (&b.ip, &b.workload) {
            (None, None) => {
                errors.push(err(at, "a backend needs an ip or a workload".into()));
                continue;
            }
            (ip, Some(name)) => {
                let Some(w) = workloads.get(name) else {
                    if !declared.contains(name) {
                        errors.push(err(
                            format!("{at}.workload"),
                            format!("Workload/{name} does not exist"),
                        ));
                    }
                    // A declared but invalid workload has its own error.
                    continue;
                };
                if w.vpc != spec.vpc && !is_gateway(spec) {
                    errors.push(err(
                        format!("{at}.workload"),
                        format!(
                            "Workload/{name} is in Vpc/{}, not in the service's Vpc/{}",
                            w.vpc, spec.vpc
                        ),
                    ));
                    continue;
                }
                let own = |ip: &str| {
                    ip == w.ip.to_string() || w.ipv6.is_some_and(|a| ip == a.to_string())
                };
                if let Some(ip) = ip.as_deref().filter(|ip| !own(ip)) {
                    errors.push(err(
                        format!("{at}.ip"),
                        format!("{ip} is not the address of Workload/{name} ({})", w.ip),
                    ));
                    continue;
                }
                if let Some(v) = b.vpc.as_deref().filter(|v| *v != w.vpc) {
                    errors.push(err(
                        format!("{at}.vpc"),
                        format!("Workload/{name} is in Vpc/{}, not in Vpc/{v}", w.vpc),
                    ));
                    continue;
                }
                (w.ip.to_string(), w.vpc.clone(), Some(name.clone()))
            }
            (Some(ip), None) => (
                ip.clone(),
                b.vpc.clone().unwrap_or_else(|| spec.vpc.clone()),
                None,
            ),
        };
        let same = |p: &Pending| match &workload {
            Some(name) => p.workload.as_ref() == Some(name),
            None => p.ip == ip && p.vpc == vpc,
        };
        match pending.iter_mut().find(|p| same(p)) {
            Some(Pending {
                origin: Origin::Explicit(first),
                ..
            }) => {
                errors.push(err(
                    at,
                    format!("the same backend as spec.backends[{first}]"),
                ));
            }
            Some(p) => {
                p.weight = weight;
                p.origin = Origin::Explicit(j);
            }
            None => pending.push(Pending {
                ip,
                vpc,
                weight,
                workload,
                origin: Origin::Explicit(j),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // A Service with an IPv6 cluster IP also gets the IPv6 address of each
    // dual-stack workload it has (same weight): one backend per family.
    let wants_v6 = spec
        .cluster_ips
        .iter()
        .any(|ip| ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()));
    if wants_v6 {
        let v6: Vec<Pending> = pending
            .iter()
            .filter_map(|p| {
                let w = workloads.get(p.workload.as_ref()?)?;
                (p.ip == w.ip.to_string()).then_some(())?;
                Some(Pending {
                    ip: w.ipv6?.to_string(),
                    vpc: p.vpc.clone(),
                    weight: p.weight,
                    workload: p.workload.clone(),
                    origin: p.origin.clone(),
                })
            })
            .collect();
        for b in v6 {
            if !pending.iter().any(|q| q.ip == b.ip && q.vpc == b.vpc) {
                pending.push(b);
            }
        }
    }
    // Unparseable IPs sort last; the model reports them with their field.
    pending.sort_by_cached_key(|p| {
        let parsed = p.ip.parse::<IpAddr>().ok();
        (parsed.is_none(), parsed, p.ip.clone(), p.vpc.clone())
    });
    Ok(pending
        .into_iter()
        .map(|p| {
            (
                pb::Backend {
                    ip: p.ip,
                    weight: p.weight,
                    workload: p.workload.unwrap_or_default(),
                    vpc: if p.vpc == spec.vpc {
                        String::new()
                    } else {
                        p.vpc
                    },
                },
                p.origin,
            )
        })
        .collect())
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
