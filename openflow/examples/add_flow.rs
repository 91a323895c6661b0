//! Adds one flow to a bridge in an atomic bundle, then dumps the bridge's
//! flows and groups.
//!
//! ```text
//! cargo run -p openflow --example add_flow -- /run/openvswitch/br0.mgmt
//! ```
//!
//! The argument is the bridge's OpenFlow management socket (`unix:` in front
//! is accepted, as `ovs-ofctl` writes it). The bridge must allow OpenFlow 1.5
//! (`ovs-vsctl set bridge br0 protocols=OpenFlow15`). The flow goes into table
//! 0 at priority 1 with cookie 0x0f10e: `ip,nw_dst=192.0.2.1 actions=drop`.

use openflow::codec::FlowMod;
use openflow::ir::{Actions, Field, Match, Proto};
use openflow::{Bundle, Connection};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(target) = std::env::args().nth(1) else {
        eprintln!("usage: add_flow <bridge mgmt socket, e.g. /run/openvswitch/br0.mgmt>");
        std::process::exit(2);
    };
    let path = target.strip_prefix("unix:").unwrap_or(&target);
    let mut conn = Connection::connect(path).await?;

    let matches = Match::new()
        .proto(Proto::Ip)
        .exact(Field::IpDst, std::net::Ipv4Addr::new(192, 0, 2, 1));
    let actions = Actions::drop();
    println!("adding: table=0,priority=1,cookie=0xf10e,{matches} actions={actions}");
    let mut bundle = Bundle::new();
    bundle.push(FlowMod::add(0, 1, 0xf10e, &matches, &actions))?;
    let late = conn.apply(&mut bundle).await?;
    if !late.is_empty() {
        eprintln!(
            "committed, with errors beside: {}",
            late.describe(|i| format!("op {}", i + 1))
        );
    }

    let dump = conn.dump().await?;
    println!("{} flows:", dump.flows.len());
    for f in &dump.flows {
        print!(
            "  table={} priority={} cookie={:#x}",
            f.table, f.priority, f.cookie
        );
        if !f.groups.is_empty() {
            print!(" groups={:?}", f.groups);
        }
        println!();
    }
    println!(
        "{} groups:",
        dump.groups.len() + dump.oversized_groups.len()
    );
    for g in &dump.groups {
        println!(
            "  group_id={} type={} selection_method={} fields({}) buckets={}",
            g.id,
            g.group_type.name(),
            g.selection_method.as_deref().unwrap_or("-"),
            g.hash_fields.join(","),
            g.buckets.len()
        );
    }
    for g in &dump.oversized_groups {
        println!(
            "  group_id={} (described in {} bytes: too large to read)",
            g.id, g.bytes
        );
    }
    Ok(())
}
