//! `show intent|pipeline|service`: gathers from the agent loop, the switch's
//! counters and the datapath, and hands the data to pure renderers (one
//! submodule each) so the text is tested without a running agent.

mod intent;
mod pipeline;
mod service;
mod text;

#[cfg(test)]
pub(crate) mod fixtures;

use std::time::Duration;

use crate::observe::{datapath, switch_stats, LbIndex};

use super::{Ctx, OpsError};

pub use pipeline::Owners;
pub use service::{count_vip_flows, key_destinations, Offload};

/// How long reading the switch's counters may take before `show service` says
/// it could not, well inside the request's own limit.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn intent(ctx: &Ctx) -> Result<String, OpsError> {
    Ok(match ctx.agent.intent().await? {
        None => "no intent applied yet\n".into(),
        Some((version, i)) => intent::render(version, &i, &ctx.node),
    })
}

pub async fn pipeline(ctx: &Ctx, service: Option<&str>) -> Result<String, OpsError> {
    let lb = ctx.agent.lb().await?;
    if let Some(name) = service {
        check_service(&lb, name)?;
    }
    let Some(installed) = ctx.agent.installed().await? else {
        return Ok(
            "nothing installed yet (no intent applied, or the first reconcile has not finished)\n"
                .into(),
        );
    };
    let intent = ctx.agent.intent().await?;
    let owners = Owners::new(intent.as_ref().map(|(_, i)| i), &lb, &ctx.node);
    pipeline::render(&installed, &lb, &owners, service)
}

pub async fn service(ctx: &Ctx, name: &str) -> Result<String, OpsError> {
    let lb = ctx.agent.lb().await?;
    check_service(&lb, name)?;
    let view = &lb.services[name];
    let vips = view.vips();
    let (counters, offload) = tokio::join!(counters(ctx, &lb, name), offload(ctx, &vips));
    Ok(service::render(view, &counters, &offload))
}

pub(super) fn check_service(lb: &LbIndex, name: &str) -> Result<(), OpsError> {
    if lb.services.contains_key(name) {
        return Ok(());
    }
    let names: Vec<&str> = lb.services.keys().map(|k| &**k).collect();
    Err(OpsError(text::unknown("Service", name, &names)))
}

async fn counters(
    ctx: &Ctx,
    lb: &LbIndex,
    name: &str,
) -> Result<crate::observe::lb_index::ServiceCounters, String> {
    let Some(plan) = switch_stats::Plan::for_service(lb, name) else {
        return Ok(Default::default());
    };
    let sw = switch_stats::read_in_parts(
        &ctx.ofctl_target,
        &plan,
        Some(ctx.agent.watch_switch_busy()),
        READ_TIMEOUT,
    )
    .await
    .map_err(|e| {
        // Most errors name the switch already.
        let msg = e.to_string();
        if msg.contains(&ctx.ofctl_target) {
            msg
        } else {
            format!("{}: {msg}", ctx.ofctl_target)
        }
    })?;
    Ok(lb.counters(&sw).remove(name).unwrap_or_default())
}

async fn offload(ctx: &Ctx, vips: &[std::net::IpAddr]) -> Result<Offload, String> {
    // `dump` bounds each command itself.
    let dump = |offloaded: bool| async move {
        datapath::dump(
            &ctx.appctl_path,
            &ctx.run_dir,
            &ctx.datapath_type,
            offloaded,
        )
        .await
        .map_err(|e| e.to_string())
    };
    let all = dump(false).await?;
    let offloaded = dump(true).await?;
    Ok(Offload {
        total: count_vip_flows(&all, vips),
        offloaded: count_vip_flows(&offloaded, vips),
    })
}

#[cfg(test)]
mod tests {
    use super::fixtures;
    use crate::compile::pipeline::cookie::Cookie;
    use crate::compile::pipeline::SERVICE_LB;
    use crate::observe::switch_stats::Plan;

    /// `show service` reads one Service: its flows by its cookie in any
    /// round, in one request, and its installed groups.
    #[test]
    fn a_service_is_read_by_its_cookie_and_its_groups() {
        let lb = fixtures::lb();
        let plan = Plan::for_service(&lb, "web").unwrap();
        assert_eq!(plan.table, SERVICE_LB.id);
        assert_eq!(plan.groups, [5]);
        let web = fixtures::service_cookie("web");
        assert_eq!(plan.flow_parts(), [(web.value(0), Cookie::SELECT_MASK)]);
        // Any round of its cookie is asked for, no other Service's.
        let (cookie, mask) = plan.flow_parts()[0];
        assert_eq!(web.value(9) & mask, cookie);
        assert_ne!(fixtures::service_cookie("db").value(0) & mask, cookie);
        assert!(Plan::for_service(&lb, "db").unwrap().groups.is_empty());
        assert_eq!(Plan::for_service(&lb, "nope"), None);
        // The whole index: every installed group.
        assert_eq!(Plan::for_index(&lb).groups, [5]);
    }
}
