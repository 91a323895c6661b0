//! The connection. One background task owns the unix socket: it reads and frames
//! messages, matches replies to pending calls by id, answers the server's `echo`
//! requests at once, and routes `update2` notifications to their monitor's channel.
//! A second task only writes, so a slow peer can never stall reading. [`OvsdbClient`]
//! is a cheap handle to that task; every call on it is bounded by a timeout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::framing::FrameDecoder;
use super::monitor::{parse_table_updates2, Schema, TableUpdates};
use super::ops::{Condition, Op};
use super::OvsdbError;

/// Updates a monitor may have queued before its consumer counts as stuck and the
/// connection is dropped (the consumer then resynchronises on a new connection).
const MONITOR_QUEUE: usize = 1024;
const COMMAND_QUEUE: usize = 256;
const READ_CHUNK: usize = 64 * 1024;

/// Bounds of one connection.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on every call, from sending the request to receiving the reply.
    pub call_timeout: Duration,
    /// Largest single message accepted from the server.
    pub max_message_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            max_message_bytes: 64 << 20,
        }
    }
}

/// What one `monitor_cond` asks for in one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorRequest {
    /// Columns to monitor; empty means all.
    pub columns: Vec<String>,
    /// Rows to monitor: those matching ANY condition; empty means all rows.
    pub conditions: Vec<Condition>,
}

impl MonitorRequest {
    /// All rows, these columns.
    pub fn columns(columns: &[&str]) -> Self {
        let columns = columns.iter().map(|c| c.to_string()).collect();
        MonitorRequest {
            columns,
            conditions: Vec::new(),
        }
    }

    /// Restricts the rows to those matching any of `conditions`.
    pub fn with_conditions(mut self, conditions: Vec<Condition>) -> Self {
        self.conditions = conditions;
        self
    }

    fn to_json(&self) -> Value {
        let mut request = json!({});
        if !self.columns.is_empty() {
            request["columns"] = json!(self.columns);
        }
        if !self.conditions.is_empty() {
            request["where"] =
                Value::Array(self.conditions.iter().map(Condition::to_json).collect());
        }
        json!([request])
    }
}

/// The updates of one monitor after its initial state. `next` returns `None` once the
/// connection is gone.
#[derive(Debug)]
pub struct Monitor {
    updates: mpsc::Receiver<TableUpdates>,
}

impl Monitor {
    /// The next `update2` notification, already parsed.
    pub async fn next(&mut self) -> Option<TableUpdates> {
        self.updates.recv().await
    }
}

/// A handle to one OVSDB connection. Clones share the connection, which closes when
/// the last handle is dropped or the server goes away.
#[derive(Debug, Clone)]
pub struct OvsdbClient {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    echoes_answered: Arc<AtomicU64>,
    call_timeout: Duration,
}

#[derive(Debug)]
enum Command {
    Call {
        id: u64,
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, OvsdbError>>,
        /// A monitor to register (by its id) before the request is sent.
        monitor: Option<(String, mpsc::Sender<TableUpdates>)>,
    },
    /// The caller gave up waiting; forget the pending call.
    Cancel { id: u64 },
}

impl OvsdbClient {
    /// Connects with default bounds.
    pub async fn connect(path: &Path) -> Result<Self, OvsdbError> {
        Self::connect_with(path, ClientOptions::default()).await
    }

    /// Connects and starts the connection task.
    pub async fn connect_with(path: &Path, options: ClientOptions) -> Result<Self, OvsdbError> {
        let connect_err = |source| OvsdbError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = tokio::time::timeout(options.connect_timeout, UnixStream::connect(path))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let echoes_answered = Arc::new(AtomicU64::new(0));
        let connection = Connection {
            pending: HashMap::new(),
            monitors: HashMap::new(),
            echoes_answered: echoes_answered.clone(),
            out: None,
        };
        tokio::spawn(connection.run(stream, command_rx, options.max_message_bytes));
        tracing::debug!(path = %path.display(), "connected to OVSDB");
        Ok(OvsdbClient {
            commands,
            next_id: Arc::new(AtomicU64::new(1)),
            echoes_answered,
            call_timeout: options.call_timeout,
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.commands.closed().await
    }

    /// How many `echo` requests from the server this connection has answered.
    pub fn echoes_answered(&self) -> u64 {
        self.echoes_answered.load(Ordering::Relaxed)
    }

    /// Any JSON-RPC call; returns the `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        self.call_registering(method, params, None).await
    }

    async fn call_registering(
        &self,
        method: &str,
        params: Value,
        monitor: Option<(String, mpsc::Sender<TableUpdates>)>,
    ) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, reply_rx) = oneshot::channel();
        let command = Command::Call {
            id,
            method: method.to_string(),
            params,
            reply,
            monitor,
        };
        let exchange = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| OvsdbError::disconnected("the connection task has stopped"))?;
            reply_rx
                .await
                .map_err(|_| OvsdbError::disconnected("the connection task has stopped"))?
        };
        match tokio::time::timeout(self.call_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                let _ = self.commands.try_send(Command::Cancel { id });
                Err(OvsdbError::Timeout {
                    method: method.to_string(),
                    timeout: self.call_timeout,
                })
            }
        }
    }

    /// Sends `echo` and checks that the server returns the same params.
    pub async fn echo(&self) -> Result<(), OvsdbError> {
        let params = json!(["ovsdb-client"]);
        let result = self.call("echo", params.clone()).await?;
        if result != params {
            return Err(OvsdbError::shape(
                "echo reply differs from the request",
                &result,
            ));
        }
        Ok(())
    }

    /// The names of the server's databases.
    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let result = self.call("list_dbs", json!([])).await?;
        serde_json::from_value(result.clone())
            .map_err(|_| OvsdbError::shape("list_dbs reply is not a list of names", &result))
    }

    /// The schema of `db`, reduced to what the cache needs.
    pub async fn get_schema(&self, db: &str) -> Result<Schema, OvsdbError> {
        Schema::parse(&self.call("get_schema", json!([db])).await?)
    }

    /// Runs `ops` as one transaction. Returns one result per op, or the first failure
    /// with its index (one past the last op if the commit itself failed).
    pub async fn transact(&self, db: &str, ops: &[Op]) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(db)];
        params.extend(ops.iter().map(Op::to_json));
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(OvsdbError::shape("transact reply is not an array", &result));
        };
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").filter(|e| !e.is_null()) {
                let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
                return Err(OvsdbError::OpFailed {
                    index,
                    op: ops.get(index).map_or("commit", Op::name).to_string(),
                    error: text(error),
                    details: r.get("details").map(text).unwrap_or_default(),
                });
            }
        }
        if results.len() < ops.len() {
            let reply = Value::Array(results);
            return Err(OvsdbError::shape(
                "transact reply has fewer results than ops",
                &reply,
            ));
        }
        Ok(results)
    }

    /// Starts a conditional monitor (`monitor_cond`, update2 semantics) named `id`.
    /// Returns the initial rows and the stream of later updates.
    pub async fn monitor_cond(
        &self,
        db: &str,
        id: &str,
        requests: &BTreeMap<String, MonitorRequest>,
    ) -> Result<(TableUpdates, Monitor), OvsdbError> {
        let requests: serde_json::Map<String, Value> = requests
            .iter()
            .map(|(table, r)| (table.clone(), r.to_json()))
            .collect();
        let (updates_tx, updates) = mpsc::channel(MONITOR_QUEUE);
        let params = json!([db, id, requests]);
        let registration = Some((id.to_string(), updates_tx));
        let initial = self
            .call_registering("monitor_cond", params, registration)
            .await?;
        Ok((parse_table_updates2(&initial)?, Monitor { updates }))
    }
}

/// State owned by the connection task.
struct Connection {
    pending: HashMap<u64, (String, oneshot::Sender<Result<Value, OvsdbError>>)>,
    monitors: HashMap<String, mpsc::Sender<TableUpdates>>,
    echoes_answered: Arc<AtomicU64>,
    out: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl Connection {
    async fn run(
        mut self,
        stream: UnixStream,
        mut commands: mpsc::Receiver<Command>,
        max_message_bytes: usize,
    ) {
        let (mut reader, writer) = stream.into_split();
        let (out, out_rx) = mpsc::unbounded_channel();
        self.out = Some(out);
        let mut writer_task = tokio::spawn(write_loop(writer, out_rx));
        let mut decoder = FrameDecoder::new(max_message_bytes);
        let mut chunk = vec![0u8; READ_CHUNK];
        let reason = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break "all client handles were dropped".to_string(),
                },
                read = reader.read(&mut chunk) => match read {
                    Ok(0) => break "the server closed the connection".to_string(),
                    Ok(n) => {
                        decoder.push(&chunk[..n]);
                        if let Err(e) = self.drain(&mut decoder) {
                            break e.to_string();
                        }
                    }
                    Err(e) => break format!("read failed: {e}"),
                },
                written = &mut writer_task => {
                    break match written {
                        Ok(Err(e)) => format!("write failed: {e}"),
                        _ => "the writer stopped".to_string(),
                    };
                }
            }
        };
        tracing::debug!(%reason, "OVSDB connection closed");
        writer_task.abort();
        commands.close();
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(OvsdbError::disconnected(reason.clone())));
        }
        // Dropping `commands` and the monitor senders tells every handle and monitor.
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Call {
                id,
                method,
                params,
                reply,
                monitor,
            } => {
                if let Some((monitor_id, updates)) = monitor {
                    if self.monitors.contains_key(&monitor_id) {
                        let error = format!("monitor id {monitor_id:?} is already in use");
                        let _ = reply.send(Err(OvsdbError::State(error)));
                        return;
                    }
                    self.monitors.insert(monitor_id, updates);
                }
                self.send(&json!({"id": id, "method": method, "params": params}));
                self.pending.insert(id, (method, reply));
            }
            Command::Cancel { id } => {
                self.pending.remove(&id);
            }
        }
    }

    fn send(&self, message: &Value) {
        if let Some(out) = &self.out {
            // A closed writer is noticed by the select loop.
            let _ = out.send(message.to_string().into_bytes());
        }
    }

    fn drain(&mut self, decoder: &mut FrameDecoder) -> Result<(), OvsdbError> {
        while let Some(message) = decoder.next_message()? {
            self.handle(message)?;
        }
        Ok(())
    }

    fn handle(&mut self, message: Value) -> Result<(), OvsdbError> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        if let Some(method) = message.get("method").and_then(Value::as_str) {
            let params = message.get("params").cloned().unwrap_or(json!([]));
            return match (method, id.is_null()) {
                ("echo", false) => {
                    self.send(&json!({"id": id, "result": params, "error": null}));
                    self.echoes_answered.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                (_, false) => {
                    tracing::debug!(method, "refusing an unknown request from the server");
                    self.send(&json!({"id": id, "result": null, "error": "unknown method"}));
                    Ok(())
                }
                ("update2", true) => self.update2(&params),
                (_, true) => {
                    tracing::debug!(method, "ignoring a notification");
                    Ok(())
                }
            };
        }
        let Some((method, reply)) = id.as_u64().and_then(|id| self.pending.remove(&id)) else {
            tracing::debug!(%id, "reply to no pending call (timed out?)");
            return Ok(());
        };
        let error = message.get("error").cloned().unwrap_or(Value::Null);
        let result = if error.is_null() {
            Ok(message.get("result").cloned().unwrap_or(Value::Null))
        } else {
            Err(server_error(method, &error))
        };
        let _ = reply.send(result);
        Ok(())
    }

    fn update2(&mut self, params: &Value) -> Result<(), OvsdbError> {
        let (Some(monitor_id), Some(updates)) =
            (params.get(0).and_then(Value::as_str), params.get(1))
        else {
            return Err(OvsdbError::shape(
                "update2 params are not [id, updates]",
                params,
            ));
        };
        let Some(sender) = self.monitors.get(monitor_id) else {
            tracing::debug!(monitor_id, "update2 for an unknown monitor");
            return Ok(());
        };
        match sender.try_send(parse_table_updates2(updates)?) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.monitors.remove(monitor_id);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(OvsdbError::State(format!(
                "monitor {monitor_id:?} has {MONITOR_QUEUE} unread updates; consumer is stuck"
            ))),
        }
    }
}

fn server_error(method: String, error: &Value) -> OvsdbError {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    match error {
        Value::Object(_) => OvsdbError::Server {
            method,
            error: text(error.get("error")),
            details: text(error.get("details")),
        },
        other => OvsdbError::Server {
            method,
            error: text(Some(other)),
            details: String::new(),
        },
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    while let Some(bytes) = out.recv().await {
        writer.write_all(&bytes).await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
