//! A minimal client for an OVS daemon's unixctl socket: JSON-RPC 1.0 over a unix
//! stream, the protocol `ovs-appctl` speaks. Requests are pipelined (a bounded window
//! in flight) so thousands of `ofproto/trace` calls cost one connection, not one
//! `ovs-appctl` process each.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Requests in flight at once: enough to hide the round trip, small enough that
/// neither side's socket buffer fills.
const WINDOW: usize = 32;
/// Bound on any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// One connection to a unixctl socket.
#[derive(Debug)]
pub(crate) struct Unixctl {
    stream: UnixStream,
    /// Bytes received and not yet parsed (replies arrive back to back, unframed).
    pending: Vec<u8>,
    /// How much of `pending` has been parsed.
    parsed: usize,
    next_id: u64,
}

impl Unixctl {
    pub(crate) fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to unixctl socket {}", path.display()))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Unixctl {
            stream,
            pending: Vec::new(),
            parsed: 0,
            next_id: 0,
        })
    }

    /// Runs `method` once per element of `params`, in order, and returns each reply's
    /// `result` text. Any error reply fails the whole call, naming the request.
    pub(crate) fn call_many(
        &mut self,
        method: &str,
        params: &[Vec<String>],
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(params.len());
        let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
        let mut next = 0;
        while out.len() < params.len() {
            while next < params.len() && in_flight.len() < WINDOW {
                let id = self.next_id;
                self.next_id += 1;
                let req = json!({"id": id, "method": method, "params": params[next]});
                self.stream
                    .write_all(req.to_string().as_bytes())
                    .with_context(|| format!("sending {method} to the unixctl socket"))?;
                in_flight.push_back((id, next));
                next += 1;
            }
            let (id, index) = in_flight.pop_front().expect("a request is in flight");
            let reply = self
                .next_reply()
                .with_context(|| format!("reading the reply to {method}"))?;
            if reply["id"] != json!(id) {
                bail!("unixctl reply out of order: wanted id {id}, got {reply}");
            }
            if !reply["error"].is_null() {
                bail!("{method} {:?} failed: {}", params[index], reply["error"]);
            }
            let text = reply["result"]
                .as_str()
                .ok_or_else(|| anyhow!("{method} reply without a text result: {reply}"))?;
            out.push(text.to_string());
        }
        Ok(out)
    }

    /// The next complete JSON value on the stream. Parsing from a byte slice (and
    /// reading more only when the value is cut off) is far cheaper than a byte-wise
    /// reader for replies of tens of kilobytes.
    fn next_reply(&mut self) -> Result<Value> {
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.pending[self.parsed..]).into_iter();
            match values.next() {
                Some(Ok(value)) => {
                    self.parsed += values.byte_offset();
                    return Ok(value);
                }
                Some(Err(e)) if !e.is_eof() => return Err(e).context("a malformed reply"),
                _ => {}
            }
            // Cut off: drop what was parsed, then read more.
            self.pending.drain(..self.parsed);
            self.parsed = 0;
            let start = self.pending.len();
            self.pending.resize(start + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.pending[start..]);
            let n = *read.as_ref().unwrap_or(&0);
            self.pending.truncate(start + n);
            if read.context("reading the unixctl socket")? == 0 {
                bail!("the unixctl socket closed mid-reply");
            }
        }
    }
}
