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
        installed: installed.as_ref().map(|i| &i.state),
        switch: switch.as_ref().map_err(String::as_str),
    };
    Ok(hops::check(&gathered).render())
}
