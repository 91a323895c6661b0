//! Manifest files into typed documents.
//!
//! A file holds one or more YAML documents (`---`), each a Kubernetes-style object
//! with `apiVersion`, `kind`, `metadata` and `spec`. The typed structs reject
//! unknown fields, so a misspelt field is an error that names it rather than a
//! silently ignored value. This module checks only shape; `resolve` turns the
//! documents into proto objects and runs the model's field and cross-object rules.

use std::collections::BTreeMap;

use dpu_model::Kind;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use crate::diag::{IntentError, Source};

/// The only `apiVersion` this release reads.
pub const API_VERSION: &str = "dpu.yusur.io/v1alpha1";

/// A file may hold at most this many documents. It also bounds the document
/// loop should the YAML parser ever keep yielding documents.
const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

/// One well-formed manifest document.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub source: Source,
    pub kind: Kind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
}

impl Doc {
    /// `Kind/name` as errors show it.
    pub fn object(&self) -> String {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        format!("{}/{name}", self.kind)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Vpc(VpcSpec),
    Subnet(SubnetSpec),
    Workload(WorkloadSpec),
    Service(ServiceSpec),
    Probe(ProbeSpec),
    Node(NodeSpec),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest<S> {
    #[allow(dead_code)] // checked in the header pass
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VpcSpec {
    pub vni: u32,
}

/// `kind: DpuNode`: a DPU and the underlay address its Geneve tunnels end on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(rename = "tunnelIP")]
    pub tunnel_ip: String,
    /// The host's address and MAC on its PF, for node ClusterIP Services.
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
    #[serde(rename = "hostMAC", default)]
    pub host_mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubnetSpec {
    pub vpc: String,
    pub cidr: String,
    pub gateway: String,
    #[serde(default)]
    pub node_blocks: Vec<NodeBlockSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeBlockSpec {
    pub node: String,
    pub cidr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKindSpec {
    Pod,
    #[serde(rename = "VM")]
    Vm,
    BareMetal,
    #[serde(rename = "VNicIP")]
    VnicIp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub kind: WorkloadKindSpec,
    pub vpc: String,
    pub ip: String,
    /// A second, IPv6 address (dual stack).
    pub ipv6: Option<String>,
    pub mac: Option<String>,
    pub node: String,
    pub port: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ProtocolSpec {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub protocol: Option<ProtocolSpec>,
    pub port: u32,
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendSpec {
    pub ip: Option<String>,
    pub workload: Option<String>,
    pub weight: Option<u32>,
    /// The backend's VPC when given by `ip`; the Service's when absent. Only a
    /// service-gateway Service (`EIPServiceGateway`) has backends in other VPCs.
    pub vpc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AffinityType {
    #[serde(rename = "ClientIP")]
    ClientIp,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinitySpec {
    #[serde(rename = "type")]
    pub affinity: AffinityType,
    pub timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ScenarioSpec {
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    #[serde(rename = "NodeClusterIP")]
    NodeClusterIp,
    #[serde(rename = "EIPLoadBalancer")]
    EipLoadBalancer,
    #[serde(rename = "EIPServiceGateway")]
    EipServiceGateway,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub vpc: String,
    /// Absent is empty: a service gateway has none; every other scenario
    /// needs one (the model says so, naming `spec.clusterIPs`).
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ServicePortSpec>,
    /// Absent or empty selects nothing (as for a Kubernetes Service).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    pub session_affinity: Option<SessionAffinitySpec>,
    pub eip: Option<String>,
    /// The DPU node that owns the EIP: it answers ARP for it on its uplink.
    pub eip_node: Option<String>,
    pub scenario: Option<ScenarioSpec>,
    pub external_traffic_policy: Option<TrafficPolicySpec>,
}

/// `externalTrafficPolicy`, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TrafficPolicySpec {
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ProbeTypeSpec {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HTTP")]
    Http,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeSpec {
    pub service: String,
    #[serde(rename = "type")]
    pub probe_type: ProbeTypeSpec,
    pub port: u32,
    pub http_path: Option<String>,
    /// The HTTP statuses that mean healthy, inclusive (default 200..=399).
    pub http_status_min: Option<u32>,
    pub http_status_max: Option<u32>,
    pub period_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub success_threshold: Option<u32>,
    pub failure_threshold: Option<u32>,
}

/// What the first pass reads of every document: enough to name it in errors.
/// Nothing here can fail on type, so an error in this pass is a YAML error.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde_yaml_ng::Value>,
    kind: Option<serde_yaml_ng::Value>,
    metadata: Option<serde_yaml_ng::Value>,
}

impl Header {
    fn name(&self) -> Option<String> {
        let meta = self.metadata.as_ref()?;
        meta.get("name")?.as_str().map(str::to_string)
    }
}

/// Parses one manifest file. `file` is the name used in errors. Returns every
/// document that parsed, or every error found; a YAML syntax error ends the file.
/// Flow collections (`{`, `[`) nested deeper than this are refused before the YAML
/// parser sees them: its scanner takes time quadratic in the nesting depth
/// (yaml/yaml-serde#1), and the typed parse refuses more than 128 levels anyway.
/// Brackets are counted everywhere, in quoted strings and comments too, so the
/// bound is conservative; no manifest comes near it.
pub const MAX_FLOW_NESTING: usize = 256;

/// The line where flow nesting first exceeds [`MAX_FLOW_NESTING`], if it does.
fn flow_nesting_too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    for b in text.bytes() {
        match b {
            b'\n' => line += 1,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Some(line);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

pub fn parse_file(file: &str, text: &str) -> Result<Vec<Doc>, Vec<IntentError>> {
    if let Some(line) = flow_nesting_too_deep(text) {
        return Err(vec![IntentError::file(
            file,
            Some(line),
            format!("flow collections ({{ or [) nested more than {MAX_FLOW_NESTING} deep; refused before parsing"),
        )]);
    }
    // Pass 1: find the documents and their kind and name, and catch syntax errors
    // before any typed parse. (After a syntax error the YAML parser keeps
    // returning the same error, so stop at the first.)
    let mut headers: Vec<Option<Header>> = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        if headers.len() >= MAX_DOCUMENTS_PER_FILE {
            return Err(vec![IntentError::file(
                file,
                None,
                format!("more than {MAX_DOCUMENTS_PER_FILE} documents"),
            )]);
        }
        match Option::<Header>::deserialize(doc) {
            Ok(h) => headers.push(h),
            Err(e) => {
                let line = e.location().map(|l| l.line());
                let (_, msg) = split_location(&e);
                return Err(vec![IntentError::file(file, line, msg)]);
            }
        }
    }

    // Pass 2: the typed parse, driven by each document's kind.
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Some(Some(header)) = headers.get(i) else {
            let _ = IgnoredAny::deserialize(doc);
            continue;
        };
        let source = Source {
            file: file.to_string(),
            document: i + 1,
        };
        match typed_doc(&source, header, doc) {
            Ok(d) => docs.push(d),
            Err(e) => errors.push(*e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn typed_doc(
    source: &Source,
    header: &Header,
    doc: serde_yaml_ng::Deserializer<'_>,
) -> Result<Doc, Box<IntentError>> {
    let name = header.name();
    let kind_str = header.kind.as_ref().and_then(|k| k.as_str());
    let kind = kind_str.and_then(|k| Kind::ALL.into_iter().find(|x| x.manifest_kind() == k));
    let object = |kind: &str| format!("{kind}/{}", name.as_deref().unwrap_or("<unnamed>"));
    let fail = |object: Option<String>, field: &str, msg: String| {
        Box::new(IntentError::at(
            source,
            object,
            Some(field.to_string()),
            msg,
        ))
    };
    let Some(kind) = kind else {
        let _ = IgnoredAny::deserialize(doc);
        let msg = match kind_str {
            Some(k) => format!("unknown kind {k:?}"),
            None => "is required".to_string(),
        };
        let all: Vec<_> = Kind::ALL.iter().map(|k| k.manifest_kind()).collect();
        return Err(fail(
            None,
            "kind",
            format!("{msg}; expected one of {}", all.join(", ")),
        ));
    };
    let obj = object(kind.manifest_kind());
    match header.api_version.as_ref().and_then(|v| v.as_str()) {
        Some(API_VERSION) => {}
        other => {
            let _ = IgnoredAny::deserialize(doc);
            let got = other.map_or("nothing".to_string(), |v| format!("{v:?}"));
            return Err(fail(
                Some(obj),
                "apiVersion",
                format!("expected {API_VERSION:?}, got {got}"),
            ));
        }
    }
    let typed = |e: serde_yaml_ng::Error| Box::new(serde_error(source, &obj, &e));
    let (metadata, spec) = match kind {
        Kind::Vpc => parse_as(doc, Spec::Vpc).map_err(typed)?,
        Kind::Subnet => parse_as(doc, Spec::Subnet).map_err(typed)?,
        Kind::Workload => parse_as(doc, Spec::Workload).map_err(typed)?,
        Kind::Service => parse_as(doc, Spec::Service).map_err(typed)?,
        Kind::NetworkProbe => parse_as(doc, Spec::Probe).map_err(typed)?,
        Kind::Node => parse_as(doc, Spec::Node).map_err(typed)?,
    };
    Ok(Doc {
        source: source.clone(),
        kind,
        name: metadata.name,
        labels: metadata.labels,
        spec,
    })
}

fn parse_as<S: DeserializeOwned>(
    doc: serde_yaml_ng::Deserializer<'_>,
    wrap: fn(S) -> Spec,
) -> Result<(Metadata, Spec), serde_yaml_ng::Error> {
    let m = Manifest::<S>::deserialize(doc)?;
    Ok((m.metadata, wrap(m.spec)))
}

/// Turns a serde_yaml error into one that names the field. The library puts the
/// path in front of the message (`spec.ports[1]: unknown field ...`); an unknown
/// or missing field is named in full (`spec.ports[1].nmae`).
fn serde_error(source: &Source, object: &str, e: &serde_yaml_ng::Error) -> IntentError {
    let (line, text) = split_location(e);
    let (path, msg) = match text.split_once(": ") {
        Some((p, m)) if is_path(p) => (p.to_string(), m.to_string()),
        _ => (String::new(), text),
    };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|pre| msg.strip_prefix(pre))
        .and_then(|rest| rest.split('`').next());
    let field = match named {
        Some(n) if path.is_empty() => n.to_string(),
        Some(n) => format!("{path}.{n}"),
        None => path,
    };
    IntentError::at(source, Some(object.to_string()), Some(field), msg).with_line(line)
}

/// The message without its " at line L column C", and the line.
fn split_location(e: &serde_yaml_ng::Error) -> (Option<usize>, String) {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            (Some(loc.line()), text.replacen(&at, "", 1))
        }
        None => (None, text),
    }
}

fn is_path(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_' | '-'))
}

/// The good sample manifests (`tests/data/good`), parsed as `<prefix>10.yaml` etc.,
/// for the unit tests of the modules that build on them.
#[cfg(test)]
pub(crate) fn good_sample_docs(prefix: &str) -> Vec<Doc> {
    [
        ("10.yaml", include_str!("../tests/data/good/10-vpcs.yaml")),
        (
            "20.yaml",
            include_str!("../tests/data/good/20-workloads.yaml"),
        ),
        (
            "30.yaml",
            include_str!("../tests/data/good/30-services.yaml"),
        ),
    ]
    .into_iter()
    .flat_map(|(n, t)| parse_file(&format!("{prefix}{n}"), t).expect("good sample"))
    .collect()
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
