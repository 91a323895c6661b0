//! JSON-RPC 1.0 framing over a byte stream. OVSDB sends bare JSON values back to back
//! with no delimiter, so a read can hold half a message or several. [`FrameDecoder`]
//! finds message boundaries with a small resumable scanner (nesting depth, strings,
//! escapes), which keeps the work linear in the bytes received however the stream is
//! split, and only then hands a complete message to `serde_json`.

use serde_json::Value;

use super::OvsdbError;

/// Splits a byte stream into JSON messages, holding at most `max_message_bytes` of an
/// incomplete message.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this offset belong to messages already returned.
    consumed: usize,
    /// Next byte to scan.
    scan: usize,
    /// Where the current message starts, once its first byte has been seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_message_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that refuses any single message longer than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            consumed: 0,
            scan: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            max_message_bytes,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.scan -= self.consumed;
            self.start = self.start.map(|s| s - self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for a message that is not complete yet.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After an error
    /// the stream is unusable and the connection should be closed.
    pub fn next_message(&mut self) -> Result<Option<Value>, OvsdbError> {
        while self.scan < self.buf.len() {
            let byte = self.buf[self.scan];
            match self.start {
                None => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => self.consumed = self.scan + 1,
                    b'{' | b'[' => {
                        self.start = Some(self.scan);
                        self.depth = 1;
                    }
                    _ => {
                        return Err(OvsdbError::protocol(
                            "expected a JSON object between messages",
                            &self.buf[self.scan..],
                        ))
                    }
                },
                Some(start) => {
                    // Every byte of the message counts, the closing one too.
                    if self.scan + 1 - start > self.max_message_bytes {
                        return Err(OvsdbError::MessageTooLarge {
                            limit: self.max_message_bytes,
                        });
                    }
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if byte == b'\\' {
                            self.escaped = true;
                        } else if byte == b'"' {
                            self.in_string = false;
                        }
                    } else {
                        match byte {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => self.depth -= 1,
                            _ => {}
                        }
                        if self.depth == 0 {
                            let end = self.scan + 1;
                            self.scan = end;
                            self.start = None;
                            self.consumed = end;
                            return self.parse(start, end).map(Some);
                        }
                    }
                }
            }
            self.scan += 1;
        }
        if self.start.is_none() {
            // Only whitespace left: drop it now rather than on the next push.
            self.buf.clear();
            self.scan = 0;
            self.consumed = 0;
        }
        Ok(None)
    }

    fn parse(&self, start: usize, end: usize) -> Result<Value, OvsdbError> {
        let text = &self.buf[start..end];
        serde_json::from_slice(text)
            .map_err(|e| OvsdbError::protocol(format!("invalid JSON: {e}"), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drain(decoder: &mut FrameDecoder) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = decoder.next_message().unwrap() {
            out.push(v);
        }
        out
    }

    #[test]
    fn message_split_byte_by_byte() {
        let msg = json!({"id": 1, "result": [{"s": "a}\"]{b\\"}], "error": null});
        let text = msg.to_string();
        let mut decoder = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for byte in text.as_bytes() {
            decoder.push(std::slice::from_ref(byte));
            got.extend(drain(&mut decoder));
        }
        assert_eq!(got, vec![msg]);
        assert_eq!(decoder.pending_bytes(), 0);
    }

    #[test]
    fn several_messages_in_one_read_and_a_tail() {
        let a = json!({"method": "echo", "params": [], "id": "echo"});
        let b = json!({"method": "update2", "params": ["m", {}], "id": null});
        let text = format!("{a}\n{b} {{\"id\":");
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(text.as_bytes());
        assert_eq!(drain(&mut decoder), vec![a, b]);
        decoder.push(b"7,\"result\":{},\"error\":null}");
        assert_eq!(
            drain(&mut decoder),
            vec![json!({"id": 7, "result": {}, "error": null})]
        );
    }

    #[test]
    fn oversized_message_is_refused() {
        let mut decoder = FrameDecoder::new(64);
        decoder.push(format!("{{\"x\":\"{}", "a".repeat(100)).as_bytes());
        assert!(matches!(
            decoder.next_message(),
            Err(OvsdbError::MessageTooLarge { limit: 64 })
        ));
    }

    #[test]
    fn message_of_exactly_the_bound_is_accepted() {
        let text = format!("{{\"x\":\"{}\"}}", "a".repeat(10));
        let mut decoder = FrameDecoder::new(text.len());
        decoder.push(text.as_bytes());
        assert_eq!(drain(&mut decoder).len(), 1);
    }

    #[test]
    fn garbage_between_messages_is_a_protocol_error() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(b"{} hello");
        assert_eq!(decoder.next_message().unwrap(), Some(json!({})));
        let err = decoder.next_message().unwrap_err().to_string();
        assert!(err.contains("hello"), "{err}");
    }

    #[test]
    fn invalid_json_inside_a_frame_is_a_protocol_error() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(b"{\"a\": tru}");
        let err = decoder.next_message().unwrap_err().to_string();
        assert!(err.contains("invalid JSON") && err.contains("tru"), "{err}");
    }
}
