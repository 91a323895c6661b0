//! `dpu-agent explain <service>`: checks one Service hop by hop, from the
//! intent to a serving backend, against both the agent's view and the
//! switch's own, and says where the chain breaks. The hops are a pure
//! function ([`hops::check`]); this module only gathers what they read.

pub mod hops;
pub mod switch;

use super::{Ctx, OpsError};

pub async fn run(ctx: &Ctx, name: &str) -> Result<String, OpsError> {
    let summary = ctx.agent.summary().await?;
    let intent = ctx.agent.intent().await?;
    let lb = ctx.agent.lb().await?;
    let installed = ctx.agent.installed().await?;
    let switch = switch::read(&ctx.ofctl_path, &ctx.ofctl_target)
        .await
        .map_err(|e| e.to_string());
    let gathered = hops::Gathered {
        name,
        node: &ctx.node,
        intent: intent.as_ref().map(|(v, i)| (*v, i)),
        lb: &lb,
        summary: &summary,
        installed: installed.as_ref().map(|i| &*i.state),
        switch: switch.as_ref().map_err(String::as_str),
    };
    Ok(hops::check(&gathered).render())
}

/// `explain --offload [SERVICE]`: the switch's megaflows, audited
/// ([`crate::observe::offload`]); for a Service, those whose key names one of its
/// addresses and the flows they recirculate into.
pub async fn offload(ctx: &Ctx, service: Option<&str>) -> Result<String, OpsError> {
    let addrs = match service {
        None => None,
        Some(name) => {
            let lb = ctx.agent.lb().await?;
            super::show::check_service(&lb, name)?;
            let view = &lb.services[name];
            let mut addrs = view.vips();
            addrs.extend(view.backends().map(|b| b.ip));
            Some(addrs)
        }
    };
    let text =
        crate::observe::datapath::dump_verbose(&ctx.appctl_path, &ctx.run_dir, &ctx.datapath_type)
            .await
            .map_err(|e| OpsError(format!("cannot read the datapath: {e}")))?;
    let audit = crate::observe::offload::Audit::of_dump(&text);
    Ok(match (service, addrs) {
        (Some(name), Some(addrs)) => audit
            .only_addresses(&addrs)
            .render(&format!("Service {name}")),
        _ => audit.render(&format!("the datapath of node {}", ctx.node)),
    })
}
