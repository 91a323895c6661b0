//! The manifests and hosts most lab tests start from: one VPC, a client and
//! echo backends behind a Service.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

use crate::fixture::Lab;
use crate::traffic::{self, TrafficResult};

pub const VIP: &str = "10.96.0.10";
pub const GW: &str = "10.0.1.1";

pub fn mac(i: u8) -> String {
    format!("0a:00:00:00:01:{i:02x}")
}

pub fn vpc_yaml(vpc: &str, vni: u32, cidr: &str, gw: &str) -> String {
    format!(
        r#"---
apiVersion: dpu.yusur.io/v1alpha1
kind: Vpc
metadata: {{name: {vpc}}}
spec: {{vni: {vni}}}
---
apiVersion: dpu.yusur.io/v1alpha1
kind: Subnet
metadata: {{name: {vpc}-net}}
spec: {{vpc: {vpc}, cidr: "{cidr}", gateway: "{gw}"}}
"#
    )
}

pub fn workload_yaml(name: &str, vpc: &str, ip: &str, mac: &str, app: &str) -> String {
    format!(
        r#"---
apiVersion: dpu.yusur.io/v1alpha1
kind: Workload
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec: {{kind: Pod, vpc: {vpc}, ip: "{ip}", mac: "{mac}", node: dpu-1, port: {name}}}
"#
    )
}

/// [`workload_yaml`] of `kind` (Pod, VM, BareMetal, VNicIP) on DPU `dpu` of a
/// multi-DPU lab (node `dpu-<dpu+1>`).
pub fn placed_workload(
    name: &str,
    vpc: &str,
    ip: &str,
    mac: &str,
    app: &str,
    dpu: usize,
    kind: &str,
) -> String {
    workload_yaml(name, vpc, ip, mac, app)
        .replace(
            "node: dpu-1",
            &format!("node: {}", crate::multi::node_name(dpu)),
        )
        .replace("kind: Pod", &format!("kind: {kind}"))
}

/// A Service on VIP:80/tcp→8080 and VIP:53/udp→5353. `backends` is the YAML of the
/// selection (a selector line or a backends list).
pub fn service_yaml(name: &str, vpc: &str, vip: &str, selection: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: dpu.yusur.io/v1alpha1
kind: YusurService
metadata: {{name: {name}}}
spec:
  vpc: {vpc}
  clusterIPs: ["{vip}"]
  ports:
    - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}
    - {{name: dns, protocol: UDP, port: 53, targetPort: 5353}}
{selection}
{extra}
"#
    )
}

/// vpc-a with a client (10.0.1.2) and `n` backends web-1.. (10.0.1.11..) running
/// echo servers, and the manifests for them and `service`. Neither the controller
/// nor the agent runs yet.
pub fn backends_lab(tag: &str, n: u8, service: &str) -> Result<Lab> {
    let mut lab = Lab::new(tag)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &workload_yaml("client", "vpc-a", "10.0.1.2", &mac(2), "client");
    lab.add_host("client", "10.0.1.2/24", &mac(2), GW)?;
    for i in 1..=n {
        let name = format!("web-{i}");
        let ip = format!("10.0.1.{}", 10 + i);
        yaml += &workload_yaml(&name, "vpc-a", &ip, &mac(10 + i), "web");
        lab.add_host(&name, &format!("{ip}/24"), &mac(10 + i), GW)?;
        lab.echo(&name, &[8080], &[5353])?;
    }
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("10-svc.yaml", service)?;
    Ok(lab)
}

/// Load for the whole of a fault, from `client` to VIP:80: 300 new TCP
/// connections, one every 50 ms (about 15 s), each bounded by 2 s. Join it
/// for the result.
pub fn spawn_fault_load(lab: &Lab) -> Result<JoinHandle<Result<TrafficResult>>> {
    traffic::spawn_tcp_load(
        &lab.host("client")?.ns,
        &format!("{VIP}:80"),
        300,
        Duration::from_millis(50),
        Duration::from_secs(2),
    )
}

pub fn web_service(extra: &str) -> String {
    service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", extra)
}
