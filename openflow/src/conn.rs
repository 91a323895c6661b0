//! One OpenFlow 1.5 connection to a switch's unix socket (a bridge's
//! management socket): the HELLO and FEATURES handshake, and
//! [`Connection::exchange`], the one loop every request goes through. It writes a byte stream of whole messages while it reads whatever the
//! switch sends, so neither side can stall on a full socket buffer however large
//! the stream is, and it answers the switch's echo requests at the next message
//! boundary of that stream.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::codec::{self, msg_type, OFP_VERSION};
use crate::Error;

/// The most bytes handed to one `write`; the kernel takes what fits.
const WRITE_CHUNK: usize = 256 * 1024;
/// Free space the reader keeps before each read (one maximal OpenFlow message).
const READ_RESERVE: usize = 64 * 1024;
const HEADER_LEN: usize = 8;
/// How far a wrapped 16-bit message length is off per wrap.
const WRAP: usize = 1 << 16;
/// The longest wrapped message looked for: 64 × 64 KiB.
const MAX_WRAPS: usize = 64;

/// What a message handler of [`Connection::exchange`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hand on the next message.
    More,
    /// The exchange is over (once every byte of the request is written).
    Done,
}

/// A connected, version-negotiated switch.
///
/// Calls take `&mut self` and have no time bound of their own: wrap them in
/// `tokio::time::timeout`. A call dropped midway (cancelled, timed out) leaves
/// the connection at an unknown point of an exchange, and so does an
/// [`Error::Unreachable`] or [`Error::Protocol`]: connect again rather than
/// use it further.
#[derive(Debug)]
pub struct Connection {
    /// The socket, for error messages.
    path: PathBuf,
    rx: Reader,
    wr: OwnedWriteHalf,
    /// Set once both sides agreed on OpenFlow 1.5; every later message must be 1.5.
    negotiated: bool,
    next_xid: u32,
    pub(crate) next_bundle: u32,
}

/// Whole messages out of a byte stream; cancel-safe, so it can sit in a `select!`
/// next to a write.
struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    /// Start of the first message not yet handed out.
    start: usize,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("buffered", &(self.buf.len() - self.start))
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Reads more bytes; `Ok(0)` is the end of the stream. Cancel-safe.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_RESERVE);
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next whole message buffered, as a range of `buf`.
    ///
    /// With `follows`, a multipart reply may be longer than its 16-bit length
    /// field says, by a multiple of 64 KiB: `ovs-vswitchd` sends one entry too
    /// large for a message (a group of ~1000 buckets or more) as one message
    /// with the length wrapped. Such a reply ends where `follows` accepts the
    /// 8 bytes after it as the header of the message that must come next, so
    /// the caller has to have a message (a barrier reply) follow the reply.
    fn next_message(
        &self,
        follows: Option<&impl Fn(&[u8]) -> bool>,
    ) -> Result<Option<std::ops::Range<usize>>, String> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut len = usize::from(u16::from_be_bytes([avail[2], avail[3]]));
        if len < HEADER_LEN {
            return Err(format!("a message of length {len}"));
        }
        if let Some(follows) = follows.filter(|_| avail[1] == msg_type::MULTIPART_REPLY) {
            let mut wraps = 0;
            loop {
                let end = len + wraps * WRAP;
                if avail.len() < end + HEADER_LEN {
                    return Ok(None);
                }
                if follows(&avail[end..end + HEADER_LEN]) {
                    len = end;
                    break;
                }
                wraps += 1;
                if wraps > MAX_WRAPS {
                    return Err(format!(
                        "a multipart reply of length {len} followed by no expected message \
                         within {} MiB",
                        (MAX_WRAPS * WRAP) >> 20
                    ));
                }
            }
        }
        Ok((avail.len() >= len).then(|| self.start..self.start + len))
    }
}

fn version_name(v: u8) -> String {
    match v {
        1..=6 => format!("OpenFlow 1.{}", v - 1),
        _ => format!("version {v:#04x}"),
    }
}

/// The versions a HELLO offers: its version bitmap if it has one, otherwise
/// every version up to the one in its header.
fn offered_versions(hello: &[u8]) -> Vec<u8> {
    let mut offered = Vec::new();
    let mut at = HEADER_LEN;
    while hello.len() >= at + 4 {
        let kind = u16::from_be_bytes([hello[at], hello[at + 1]]);
        let len = usize::from(u16::from_be_bytes([hello[at + 2], hello[at + 3]]));
        if len < 4 || at + len > hello.len() {
            break;
        }
        if kind == 1 {
            for (word, chunk) in hello[at + 4..at + len].chunks_exact(4).enumerate() {
                let bits = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                offered.extend(
                    (0..32)
                        .filter(|b| bits & (1 << b) != 0)
                        .map(|b| (word * 32 + b) as u8),
                );
            }
            return offered;
        }
        // Elements are padded to 8 bytes.
        at += len.div_ceil(8) * 8;
    }
    (1..=hello.first().copied().unwrap_or(0)).collect()
}

/// The length of the message that starts at `at` in a stream this side encoded.
fn message_len(stream: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]])).max(HEADER_LEN)
}

/// The xid of a message of at least 8 bytes.
pub(crate) fn xid_of(msg: &[u8]) -> u32 {
    u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]])
}

impl Connection {
    /// Connects to the unix socket at `path` (`/run/openvswitch/br0.mgmt`),
    /// says HELLO, insists on OpenFlow 1.5 and asks for the switch's features
    /// (their answer proves a working bridge).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Connection, Error> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| Error::Unreachable {
                path: path.clone(),
                reason: format!("connecting: {e}"),
            })?;
        let (rd, wr) = stream.into_split();
        let mut conn = Connection {
            path,
            rx: Reader {
                rd,
                buf: Vec::with_capacity(2 * READ_RESERVE),
                start: 0,
            },
            wr,
            negotiated: false,
            next_xid: 1,
            next_bundle: 1,
        };
        let mut peer: Option<Result<(), String>> = None;
        let xid = conn.next_xid();
        conn.exchange(&codec::hello(xid), |msg| {
            match msg[1] {
                msg_type::HELLO => {
                    peer = Some(match codec::negotiate(msg) {
                        Some(OFP_VERSION) => Ok(()),
                        _ => {
                            let offered: Vec<String> = offered_versions(msg)
                                .into_iter()
                                .map(version_name)
                                .collect();
                            Err(format!(
                                "the switch does not speak OpenFlow 1.5; it offered {}",
                                if offered.is_empty() {
                                    "no version".to_string()
                                } else {
                                    offered.join(", ")
                                }
                            ))
                        }
                    });
                }
                msg_type::ERROR => {
                    peer = Some(Err(format!(
                        "the switch refused our HELLO: {}",
                        error_name(msg)
                    )))
                }
                other => {
                    peer = Some(Err(format!(
                        "message type {other} before the switch's HELLO"
                    )))
                }
            }
            Ok(Step::Done)
        })
        .await?;
        if let Some(Err(reason)) = peer {
            return Err(Error::Protocol(reason));
        }
        conn.negotiated = true;
        let xid = conn.next_xid();
        conn.exchange(&codec::features_request(xid), |msg| {
            if xid_of(msg) != xid {
                return Ok(Step::More);
            }
            match msg[1] {
                msg_type::FEATURES_REPLY => Ok(Step::Done),
                msg_type::ERROR => Err(Error::Protocol(format!(
                    "the switch refused FEATURES_REQUEST: {}",
                    error_name(msg)
                ))),
                other => Err(Error::Protocol(format!(
                    "message type {other} in answer to FEATURES_REQUEST"
                ))),
            }
        })
        .await?;
        Ok(conn)
    }

    /// A transaction id not used before on this connection.
    pub fn next_xid(&mut self) -> u32 {
        self.next_xids(1)
    }

    /// `n` consecutive transaction ids; returns the first.
    pub(crate) fn next_xids(&mut self, n: u32) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(n);
        x
    }

    /// The socket this connection is to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the switch has closed the connection while it sat idle (an
    /// `ovs-vswitchd` that exited). Keeps whatever else it finds to read.
    pub fn closed(&mut self) -> bool {
        let rx = &mut self.rx;
        loop {
            rx.buf.reserve(READ_RESERVE);
            match rx.rd.try_read_buf(&mut rx.buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Writes `out` (whole messages back to back) while handing every message the
    /// switch sends, but echoes, to `on_msg`, until `on_msg` says [`Step::Done`].
    /// Echo requests are answered between two messages of `out`. A handler error
    /// ends the exchange with that error; the caller decides whether the
    /// connection is still usable.
    ///
    /// `out` may be megabytes: the switch's replies are read while it is
    /// written, so neither side stalls on a full socket buffer.
    pub async fn exchange<F>(&mut self, out: &[u8], on_msg: F) -> Result<(), Error>
    where
        F: FnMut(&[u8]) -> Result<Step, Error>,
    {
        self.exchange_framed(out, None::<fn(&[u8]) -> bool>, on_msg)
            .await
    }

    /// Writes all of `out`, handing `on_msg` what the switch sends meanwhile,
    /// and returns once it is written, whether or not `on_msg` said
    /// [`Step::Done`]: for a stream written in parts, whose replies are read
    /// with the next part.
    pub(crate) async fn write_reading<F>(&mut self, out: &[u8], on_msg: F) -> Result<(), Error>
    where
        F: FnMut(&[u8]) -> Result<Step, Error>,
    {
        self.exchange_until(out, None::<fn(&[u8]) -> bool>, true, on_msg)
            .await
    }

    /// [`Self::exchange`], reading multipart replies whose length wrapped (see
    /// [`Reader::next_message`]); `follows` tells the header of a message that
    /// may follow one. Such a reply reaches `on_msg` longer than 64 KiB.
    pub(crate) async fn exchange_framed<F, P>(
        &mut self,
        out: &[u8],
        follows: Option<P>,
        on_msg: F,
    ) -> Result<(), Error>
    where
        F: FnMut(&[u8]) -> Result<Step, Error>,
        P: Fn(&[u8]) -> bool,
    {
        self.exchange_until(out, follows, false, on_msg).await
    }

    /// The exchange; with `written_ends`, it ends once `out` is written.
    async fn exchange_until<F, P>(
        &mut self,
        out: &[u8],
        follows: Option<P>,
        written_ends: bool,
        mut on_msg: F,
    ) -> Result<(), Error>
    where
        F: FnMut(&[u8]) -> Result<Step, Error>,
        P: Fn(&[u8]) -> bool,
    {
        let Connection {
            path,
            rx,
            wr,
            negotiated,
            ..
        } = self;
        let gone = |reason: String| Error::Unreachable {
            path: path.clone(),
            reason,
        };
        let mut pos = 0;
        // The start of the first message of `out` at or after `pos`.
        let mut boundary = 0;
        let mut echo: Vec<u8> = Vec::new();
        let mut echo_pos = 0;
        let mut done = false;
        loop {
            while let Some(range) = rx
                .next_message(follows.as_ref())
                .map_err(|e| Error::Protocol(format!("{e} from the switch")))?
            {
                let msg = &rx.buf[range.clone()];
                rx.start = range.end;
                if *negotiated && msg[0] != OFP_VERSION {
                    return Err(Error::Protocol(format!(
                        "a message in {} after agreeing on OpenFlow 1.5",
                        version_name(msg[0])
                    )));
                }
                match msg[1] {
                    msg_type::ECHO_REQUEST => {
                        echo.extend_from_slice(&codec::echo_reply(xid_of(msg), &msg[HEADER_LEN..]))
                    }
                    msg_type::ECHO_REPLY => {}
                    _ if done => {}
                    _ => done = on_msg(msg)? == Step::Done,
                }
            }
            if (done || written_ends) && pos == out.len() {
                if echo_pos < echo.len() {
                    wr.write_all(&echo[echo_pos..])
                        .await
                        .map_err(|e| gone(format!("answering an echo: {e}")))?;
                }
                return Ok(());
            }
            while boundary < pos {
                boundary += message_len(out, boundary);
            }
            let writing_echo = echo_pos > 0 || (echo_pos < echo.len() && boundary == pos);
            let slice: &[u8] = if writing_echo {
                &echo[echo_pos..]
            } else if echo.len() > echo_pos && boundary > pos {
                // Finish the message under way, then answer.
                &out[pos..boundary]
            } else {
                &out[pos..out.len().min(pos + WRITE_CHUNK)]
            };
            tokio::select! {
                biased;
                r = rx.fill() => match r {
                    Ok(0) => return Err(gone("the switch closed the connection".into())),
                    Ok(_) => {}
                    Err(e) => return Err(gone(format!("reading: {e}"))),
                },
                r = wr.write(slice), if !slice.is_empty() => {
                    let n = r.map_err(|e| gone(format!("writing: {e}")))?;
                    if n == 0 {
                        return Err(gone("writing: the socket took nothing".into()));
                    }
                    if writing_echo {
                        echo_pos += n;
                        if echo_pos == echo.len() {
                            echo.clear();
                            echo_pos = 0;
                        }
                    } else {
                        pos += n;
                    }
                }
            }
        }
    }
}

/// The error's name, or why it could not be read.
pub(crate) fn error_name(msg: &[u8]) -> String {
    match codec::parse_error(msg) {
        Ok(e) => e.name(),
        Err(e) => format!("an unreadable error message ({e})"),
    }
}
