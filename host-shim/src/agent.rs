//! The agent's Attachments API over mTLS. Every connect and call is bounded by the
//! config's `timeoutMs`; gRPC statuses become [`ShimError`]s here and nowhere else.

use std::future::Future;
use std::path::Path;

use dpu_proto::v1 as pb;
use dpu_proto::v1::attachments_client::AttachmentsClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::config::AgentConf;
use crate::error::{ErrorChain, ShimError};
use crate::log::debug;

#[derive(Debug)]
pub struct Agent {
    client: AttachmentsClient<Channel>,
    conf: AgentConf,
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, ShimError> {
    std::fs::read(path).map_err(|e| ShimError::io(format!("{field} {}", path.display()), e))
}

impl Agent {
    /// Reads the TLS files and connects. An unreachable agent is
    /// [`ShimError::AgentUnavailable`].
    pub async fn connect(conf: &AgentConf) -> Result<Self, ShimError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&conf.ca, "tls.ca")?))
            .identity(Identity::from_pem(
                read(&conf.cert, "tls.cert")?,
                read(&conf.key, "tls.key")?,
            ))
            .domain_name(conf.server_name.clone());
        let endpoint = Endpoint::from_shared(conf.endpoint.clone())
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| ShimError::config("agent/tls", ErrorChain(&e).to_string()))?
            .connect_timeout(conf.timeout)
            .timeout(conf.timeout);
        let unavailable = |detail: String| ShimError::AgentUnavailable {
            agent: conf.endpoint.clone(),
            detail,
        };
        debug(format_args!("connecting to {}", conf.endpoint));
        let channel = match tokio::time::timeout(conf.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(unavailable(ErrorChain(&e).to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no connection within {:?}",
                    conf.timeout
                )))
            }
        };
        Ok(Self {
            client: AttachmentsClient::new(channel),
            conf: conf.clone(),
        })
    }

    /// Runs one call under the timeout and maps its status.
    async fn call<T, F>(&self, rpc: &'static str, fut: F) -> Result<T, ShimError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        debug(format_args!("calling {rpc}"));
        match tokio::time::timeout(self.conf.timeout, fut).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.status_error(rpc, status)),
            Err(_) => Err(ShimError::AgentUnavailable {
                agent: self.conf.endpoint.clone(),
                detail: format!("{rpc} got no answer within {:?}", self.conf.timeout),
            }),
        }
    }

    fn status_error(&self, rpc: &'static str, status: tonic::Status) -> ShimError {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                ShimError::AgentUnavailable {
                    agent: self.conf.endpoint.clone(),
                    detail: format!("{rpc}: {:?}: {}", status.code(), status.message()),
                }
            }
            code => ShimError::AgentRefused {
                rpc,
                status: format!("{code:?}"),
                message: status.message().to_string(),
            },
        }
    }

    pub async fn attach(&self, req: pb::AttachRequest) -> Result<pb::Attachment, ShimError> {
        let mut client = self.client.clone();
        self.call("Attach", client.attach(req)).await
    }

    /// Releases the attachment. An attachment the agent does not know is not an error.
    pub async fn detach(&self, key: pb::AttachmentKey) -> Result<pb::DetachResponse, ShimError> {
        let mut client = self.client.clone();
        let req = pb::DetachRequest { key: Some(key) };
        match self.call("Detach", client.detach(req)).await {
            Err(ShimError::AgentRefused { status, .. }) if status == "NotFound" => {
                Ok(pb::DetachResponse::default())
            }
            other => other,
        }
    }

    /// The attachment, or `None` when the agent has none (NOT_FOUND).
    pub async fn get(&self, key: pb::AttachmentKey) -> Result<Option<pb::Attachment>, ShimError> {
        let mut client = self.client.clone();
        match self.call("Get", client.get(key)).await {
            Ok(a) => Ok(Some(a)),
            Err(ShimError::AgentRefused { status, .. }) if status == "NotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self) -> Result<Vec<pb::Attachment>, ShimError> {
        let mut client = self.client.clone();
        Ok(self
            .call("List", client.list(pb::ListRequest {}))
            .await?
            .attachments)
    }

    pub async fn ready(&self) -> Result<pb::ReadyResponse, ShimError> {
        let mut client = self.client.clone();
        self.call("Ready", client.ready(pb::ReadyRequest {})).await
    }
}
