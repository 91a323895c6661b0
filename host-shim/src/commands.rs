//! The CNI commands that talk to the agent: ADD, DEL, CHECK, STATUS and GC. Each is the
//! sequence of agent calls and VF moves the README describes; what can be undone is.

use std::path::Path;

use dpu_proto::v1 as pb;
use serde_json::Value;

use crate::agent::Agent;
use crate::attachment::Attachment;
use crate::check::{self, Observed};
use crate::config::{NetConf, ValidAttachment};
use crate::env::{check_ifname, CniEnv, Command};
use crate::error::ShimError;
use crate::log::debug;
use crate::vf::{self, Sides};
use crate::{netns, result};

/// Runs `env.command`; `Some` is the result to print. VERSION is answered elsewhere.
pub async fn execute(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, ShimError> {
    match env.command {
        Command::Add => add(env, conf).await.map(Some),
        Command::Del => del(env, conf).await.map(|()| None),
        Command::Check => check(env, conf).await.map(|()| None),
        Command::Status => status(conf).await.map(|()| None),
        Command::Gc => gc(conf).await.map(|()| None),
        Command::Version => Ok(None),
    }
}

fn key(env: &CniEnv) -> pb::AttachmentKey {
    pb::AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// CNI_NETNS, which env validation guarantees for ADD and CHECK.
fn netns_path(env: &CniEnv) -> Result<&Path, ShimError> {
    env.netns.as_deref().ok_or_else(|| ShimError::InvalidEnv {
        vars: vec!["CNI_NETNS"],
        reason: "required, missing".into(),
    })
}

async fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, ShimError> {
    let host_fd = netns::open_host()?;
    let path = netns_path(env)?;
    let label = path.display().to_string();
    let pod_fd = netns::open(path)?.ok_or_else(|| ShimError::UnknownContainer {
        netns: label.clone(),
    })?;
    netns::ensure_distinct(&host_fd, &pod_fd, path)?;
    let host = netns::links_here("host netns")?;
    let pod = netns::links_in(&pod_fd, &label)?;
    if pod.find(&env.ifname).await?.is_some() {
        return Err(ShimError::InterfaceExists {
            ifname: env.ifname.clone(),
            netns: label,
        });
    }

    let agent = Agent::connect(&conf.agent).await?;
    let mut reply = agent
        .attach(pb::AttachRequest {
            key: Some(key(env)),
            pod_namespace: env.args.pod_namespace.clone(),
            pod_name: env.args.pod_name.clone(),
            subnet: conf.subnet.clone(),
            labels: conf
                .labels
                .iter()
                .map(|l| pb::Label {
                    key: l.key.clone(),
                    value: l.value.clone(),
                })
                .collect(),
            network: conf.name.clone(),
        })
        .await?;
    debug(format_args!("agent attached {reply:?}"));
    let resolved = crate::sysfs::resolve_vf(&mut reply, conf);

    let sides = Sides {
        host: &host,
        host_fd: &host_fd,
        pod: &pod,
        pod_fd: &pod_fd,
    };
    let temp = vf::temp_name(&env.container_id, &env.ifname);
    let plumbed = async {
        resolved?;
        let att = Attachment::try_from(reply)?;
        // Only a netdev the config allows goes into the pod; a refusal touches nothing
        // and releases the attachment below.
        crate::sysfs::check_movable(
            Path::new("/sys"),
            conf.pf.as_deref(),
            &conf.vf_allow_list,
            &att.vf,
        )?;
        vf::move_in(sides, &att, &env.ifname, &temp).await?;
        Ok::<_, ShimError>(att)
    }
    .await;
    match plumbed {
        Ok(att) => Ok(result::add_result(
            conf.cni_version,
            &env.ifname,
            &label,
            &att,
            conf.prev_result.as_ref(),
        )),
        // The VF may still be in the pod: keep the attachment for the DEL that follows.
        Err(error @ ShimError::UndoIncomplete { .. }) => Err(error),
        Err(error) => match agent.detach(key(env)).await {
            Ok(_) => Err(error),
            Err(detach) => Err(ShimError::UndoIncomplete {
                error: Box::new(error),
                undo: vec![format!("Detach: {detach}")],
            }),
        },
    }
}

async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), ShimError> {
    let host_fd = netns::open_host()?;
    // A netns that is gone (or unreadable) leaves nothing to move: DEL goes on.
    let pod_fd = match env.netns.as_deref() {
        Some(path) => match netns::open(path) {
            Ok(Some(fd)) => {
                netns::ensure_distinct(&host_fd, &fd, path)?;
                Some(fd)
            }
            Ok(None) => None,
            Err(e) => {
                debug(format_args!("{e}; treating the netns as gone"));
                None
            }
        },
        None => None,
    };
    let label = env
        .netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();

    let agent = Agent::connect(&conf.agent).await?;
    let Some(mut attachment) = agent.get(key(env)).await? else {
        debug(format_args!(
            "the agent has no attachment for {}/{}",
            env.container_id, env.ifname
        ));
        return Ok(());
    };
    crate::sysfs::resolve_vf(&mut attachment, conf)?;
    check_ifname(&attachment.vf).map_err(|reason| ShimError::BadAttachment {
        field: "vf",
        reason,
    })?;

    let host = netns::links_here("host netns")?;
    let pod = match &pod_fd {
        Some(fd) => Some(netns::links_in(fd, &label)?),
        None => None,
    };
    let temp = vf::temp_name(&env.container_id, &env.ifname);
    let moved = vf::move_out(
        &host,
        &host_fd,
        pod.as_ref(),
        &env.ifname,
        &temp,
        &attachment.vf,
    )
    .await?;
    debug(format_args!(
        "VF {} back on the host: {moved}",
        attachment.vf
    ));

    let detached = agent.detach(key(env)).await?;
    if !detached.vf.is_empty() && detached.vf != attachment.vf {
        debug(format_args!(
            "Detach released {} but Get named {}",
            detached.vf, attachment.vf
        ));
    }
    Ok(())
}

async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), ShimError> {
    let path = netns_path(env)?;
    let label = path.display().to_string();
    let pod_fd = netns::open(path)?.ok_or_else(|| ShimError::UnknownContainer {
        netns: label.clone(),
    })?;
    netns::ensure_distinct(&netns::open_host()?, &pod_fd, path)?;
    let agent = Agent::connect(&conf.agent).await?;
    let Some(mut reply) = agent.get(key(env)).await? else {
        return Err(ShimError::Drift {
            drifts: vec![format!(
                "the agent has no attachment for {}/{}",
                env.container_id, env.ifname
            )],
        });
    };
    crate::sysfs::resolve_vf(&mut reply, conf)?;
    let att = Attachment::try_from(reply)?;
    let pod = netns::links_in(&pod_fd, &label)?;
    let link = pod.find(&env.ifname).await?;
    let addresses = match &link {
        Some(l) => pod.addresses(l).await?,
        None => Vec::new(),
    };
    let prev = conf
        .prev_result
        .as_ref()
        .map(|p| result::prev_interface(p, &env.ifname, &label))
        .unwrap_or_default();
    let drifts = check::drift(
        &att,
        &Observed {
            ifname: &env.ifname,
            netns: &label,
            link: link.as_ref(),
            addresses: &addresses,
            prev: &prev,
        },
    );
    if drifts.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Drift { drifts })
    }
}

async fn status(conf: &NetConf) -> Result<(), ShimError> {
    let not_available = |e: ShimError| match e {
        ShimError::AgentUnavailable { agent, detail } => {
            ShimError::PluginNotAvailable { agent, detail }
        }
        other => other,
    };
    let agent = Agent::connect(&conf.agent).await.map_err(not_available)?;
    let ready = agent.ready().await.map_err(not_available)?;
    if ready.ready {
        Ok(())
    } else {
        Err(ShimError::AgentNotReady {
            agent: conf.agent.endpoint.clone(),
            reason: ready.reason,
        })
    }
}

/// Detaches every attachment of this network (same subnet) that the runtime no longer
/// lists. The netns are gone, so there is no VF to move; the agent reclaims it.
async fn gc(conf: &NetConf) -> Result<(), ShimError> {
    let agent = Agent::connect(&conf.agent).await?;
    let mut released = 0;
    let mut failures = Vec::new();
    for attachment in agent.list().await? {
        let key = attachment.key.unwrap_or_default();
        let valid = ValidAttachment {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
        };
        let other_network = !conf.subnet.is_empty()
            && !attachment.subnet.is_empty()
            && attachment.subnet != conf.subnet;
        if conf.valid_attachments.contains(&valid) || other_network {
            continue;
        }
        let name = format!("{}/{}", key.container_id, key.ifname);
        debug(format_args!("GC: detaching stale {name}"));
        match agent.detach(key).await {
            Ok(_) => released += 1,
            Err(e) => failures.push((name, e)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ShimError::GcIncomplete { released, failures })
    }
}
