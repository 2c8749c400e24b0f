//! The socket stream port's wire format: stream frames exchanged directly
//! between the two peers over a dedicated Unix socket, when shared memory is
//! not used. Pure encoding and decoding; the client does the I/O.
//!
//! A message is `u32 len | u8 kind | body[len]` (little endian). Kinds:
//!
//! | kind | body | direction |
//! |---|---|---|
//! | stream-data | items, each `u32 len | u64 charge | bytes` | producer → consumer |
//! | stream-end | empty | producer → consumer |
//! | stream-error | UTF-8 message | producer → consumer |
//! | stream-cancel (ack) | empty | producer → consumer |
//! | blob | `u64 size | u64 charge`; the blob's memfd rides on the message's first byte (`SCM_RIGHTS`) | producer → consumer |
//! | stream-credit | `u64` new limit | consumer → producer |
//! | cancel | empty | consumer → producer |
//! | result | the call's outcome, postcard, at most [`MAX_RESULT`] bytes | service → caller, first direction only, after the service's last use of the port |
//!
//! Several items share one stream-data message: that is the batching.
//! "The socket port" in `PROTOCOL.md` (at the repository root) gives the
//! geometry and the rules both peers follow.

#![forbid(unsafe_code)]

/// Bytes of a message header.
pub const MESSAGE_HEADER: usize = 5;
/// Bytes of an item header inside stream-data.
pub const ITEM_HEADER: usize = 12;
/// Longest stream-error message kept.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Longest result body: the same bound as a ring's result slot.
pub const MAX_RESULT: usize = crate::ring::MAX_RING_RESULT;
/// Longest message body a producer accepts from its consumer (credit,
/// cancel, and on the caller's side the call's result).
pub const MAX_CONTROL_BODY: usize = MAX_RESULT;

const KIND_DATA: u8 = 1;
const KIND_END: u8 = 2;
const KIND_ERROR: u8 = 3;
const KIND_CANCELLED: u8 = 4;
const KIND_CREDIT: u8 = 5;
const KIND_CANCEL: u8 = 6;
const KIND_RESULT: u8 = 7;
const KIND_BLOB: u8 = 8;
/// Bytes of a blob message's body.
pub const BLOB_BODY: usize = 16;

/// A decoded link message; data borrows from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// A batch of items.
    Data(Items<'a>),
    /// A blob: its declared size and its charge. Its descriptor came with
    /// the message's first byte.
    Blob {
        /// The size the sender declares.
        size: u64,
        /// Credit it costs.
        charge: u64,
    },
    /// The producer finished.
    End,
    /// The producer failed with this message.
    Error(String),
    /// The producer acknowledges a cancellation.
    Cancelled,
    /// The consumer grants credit up to this absolute limit.
    Credit(u64),
    /// The consumer asks the producer to stop.
    Cancel,
    /// The service's answer to the call, sent to the caller peer to peer
    /// (postcard bytes, decoded by the client).
    Result(&'a [u8]),
}

/// The items of one stream-data message, validated as they are iterated.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Items<'a> {
    body: &'a [u8],
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The header announces more than the port allows.
    #[error("stream message of {len} bytes exceeds the port's maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// Unknown kind byte.
    #[error("unknown stream message kind {0}")]
    UnknownKind(u8),
    /// The body does not match its kind.
    #[error("malformed stream message: {0}")]
    Malformed(&'static str),
}

/// Splits the first message off `buf`: `Ok(None)` when incomplete, else the
/// message and the bytes it used. Checks the length before anything else.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(LinkMessage<'_>, usize)>, LinkError> {
    if buf.len() < MESSAGE_HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_body {
        return Err(LinkError::TooLarge { len, max: max_body });
    }
    let kind = buf[4];
    if buf.len() < MESSAGE_HEADER + len {
        return Ok(None);
    }
    let body = &buf[MESSAGE_HEADER..MESSAGE_HEADER + len];
    let empty = |m| {
        if body.is_empty() {
            Ok(m)
        } else {
            Err(LinkError::Malformed("unexpected body"))
        }
    };
    let msg = match kind {
        KIND_DATA => {
            Items { body }.validate()?;
            LinkMessage::Data(Items { body })
        }
        KIND_END => empty(LinkMessage::End)?,
        KIND_CANCELLED => empty(LinkMessage::Cancelled)?,
        KIND_CANCEL => empty(LinkMessage::Cancel)?,
        KIND_ERROR => LinkMessage::Error(
            String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_MESSAGE)]).into_owned(),
        ),
        KIND_RESULT if body.len() <= MAX_RESULT => LinkMessage::Result(body),
        KIND_RESULT => return Err(LinkError::Malformed("result body too long")),
        KIND_BLOB => {
            let body: [u8; BLOB_BODY] = body
                .try_into()
                .map_err(|_| LinkError::Malformed("blob body is not 16 bytes"))?;
            LinkMessage::Blob {
                size: u64::from_le_bytes(body[..8].try_into().unwrap()),
                charge: u64::from_le_bytes(body[8..].try_into().unwrap()),
            }
        }
        KIND_CREDIT => {
            let limit: [u8; 8] = body
                .try_into()
                .map_err(|_| LinkError::Malformed("credit body is not 8 bytes"))?;
            LinkMessage::Credit(u64::from_le_bytes(limit))
        }
        other => return Err(LinkError::UnknownKind(other)),
    };
    Ok(Some((msg, MESSAGE_HEADER + len)))
}

impl<'a> Items<'a> {
    fn validate(self) -> Result<(), LinkError> {
        let mut rest = self.body;
        if rest.is_empty() {
            return Err(LinkError::Malformed("empty stream-data"));
        }
        while !rest.is_empty() {
            let (_, _, used) = Self::split(rest)?;
            rest = &rest[used..];
        }
        Ok(())
    }

    fn split(rest: &'a [u8]) -> Result<(&'a [u8], u64, usize), LinkError> {
        if rest.len() < ITEM_HEADER {
            return Err(LinkError::Malformed("truncated item header"));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
        let charge = u64::from_le_bytes(rest[4..12].try_into().unwrap());
        if rest.len() - ITEM_HEADER < len {
            return Err(LinkError::Malformed("item overruns its message"));
        }
        Ok((
            &rest[ITEM_HEADER..ITEM_HEADER + len],
            charge,
            ITEM_HEADER + len,
        ))
    }

    /// The first item (payload and charge) and the remaining items.
    pub fn first(self) -> Option<((&'a [u8], u64), Items<'a>)> {
        if self.body.is_empty() {
            return None;
        }
        // Validated when the message was decoded.
        let (data, charge, used) = Self::split(self.body).ok()?;
        Some((
            (data, charge),
            Items {
                body: &self.body[used..],
            },
        ))
    }

    /// True when no items remain.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = (&'a [u8], u64);
    fn next(&mut self) -> Option<Self::Item> {
        let (item, rest) = self.first()?;
        *self = rest;
        Some(item)
    }
}

/// Builds outgoing link messages, batching consecutive items into one
/// stream-data message.
///
/// The buffer is reused without being cleared: room handed out for an item
/// holds whatever bytes were there before (initialized, never read by the
/// encoder), so a reservation costs no zeroing, and written bytes are
/// dropped from the front by moving a cursor, not the rest of the buffer.
#[derive(Debug, Default)]
pub struct LinkEncoder {
    /// Initialized storage; `buf[start..end]` is what is buffered.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    open_data: Option<usize>,
    last_item: Option<usize>,
}

impl LinkEncoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `extra` bytes of room after the end: moves what is buffered to
    /// the front when written bytes are still there, grows the storage
    /// when that is not enough.
    fn room(&mut self, extra: usize) {
        if self.end + extra <= self.buf.len() {
            return;
        }
        if self.start > 0 {
            let shift = self.start;
            self.buf.copy_within(shift..self.end, 0);
            self.end -= shift;
            self.start = 0;
            self.open_data = self.open_data.map(|p| p - shift);
            self.last_item = self.last_item.map(|p| p - shift);
        }
        if self.end + extra > self.buf.len() {
            self.buf.resize(self.end + extra, 0);
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Appends an item to the current batch, starting one if needed.
    pub fn push_item(&mut self, data: &[u8], charge: u64) {
        let item = self.begin_item(data.len(), charge);
        item.copy_from_slice(data);
    }

    /// Appends an item header and returns room for `len` payload bytes, to
    /// be filled in place. The room holds stale bytes, not zeros.
    pub fn begin_item(&mut self, len: usize, charge: u64) -> &mut [u8] {
        self.room(MESSAGE_HEADER + ITEM_HEADER + len);
        if self.open_data.is_none() {
            self.open_data = Some(self.end);
            self.append(&[0, 0, 0, 0, KIND_DATA]);
        }
        self.last_item = Some(self.end);
        self.append(&(len as u32).to_le_bytes());
        self.append(&charge.to_le_bytes());
        let start = self.end;
        self.end += len;
        &mut self.buf[start..self.end]
    }

    /// Shrinks the item begun last with [`begin_item`](Self::begin_item) to
    /// `len` bytes and sets its charge.
    pub fn finish_item(&mut self, len: usize, charge: u64) {
        let header = self.last_item.take().expect("an item was begun");
        let reserved = self.end - header - ITEM_HEADER;
        assert!(len <= reserved);
        self.buf[header..header + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.buf[header + 4..header + 12].copy_from_slice(&charge.to_le_bytes());
        self.end = header + ITEM_HEADER + len;
    }

    /// The payload room of the item begun last and not yet finished.
    pub fn begun_item(&mut self) -> Option<&mut [u8]> {
        let header = self.last_item?;
        Some(&mut self.buf[header + ITEM_HEADER..self.end])
    }

    /// Forgets the item begun last, as if it had never been begun.
    pub fn abandon_item(&mut self) {
        if let Some(header) = self.last_item.take() {
            self.end = header;
            if self.open_data == Some(header - MESSAGE_HEADER) {
                self.end = header - MESSAGE_HEADER;
                self.open_data = None;
            }
        }
    }

    fn close_data(&mut self) {
        self.last_item = None;
        if let Some(start) = self.open_data.take() {
            let len = (self.end - start - MESSAGE_HEADER) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        }
    }

    fn control(&mut self, kind: u8, body: &[u8]) {
        self.close_data();
        self.room(MESSAGE_HEADER + body.len());
        self.append(&(body.len() as u32).to_le_bytes());
        self.append(&[kind]);
        self.append(body);
    }

    /// Appends a blob message (its descriptor must be sent with the
    /// message's first byte).
    pub fn blob(&mut self, size: u64, charge: u64) {
        let mut body = [0u8; BLOB_BODY];
        body[..8].copy_from_slice(&size.to_le_bytes());
        body[8..].copy_from_slice(&charge.to_le_bytes());
        self.control(KIND_BLOB, &body);
    }

    /// Appends stream-end.
    pub fn end(&mut self) {
        self.control(KIND_END, &[]);
    }

    /// Appends stream-error.
    pub fn error(&mut self, message: &str) {
        let m = message.as_bytes();
        self.control(KIND_ERROR, &m[..m.len().min(MAX_ERROR_MESSAGE)]);
    }

    /// Appends the producer's cancellation acknowledgement.
    pub fn cancelled(&mut self) {
        self.control(KIND_CANCELLED, &[]);
    }

    /// Appends stream-credit.
    pub fn credit(&mut self, limit: u64) {
        self.control(KIND_CREDIT, &limit.to_le_bytes());
    }

    /// Appends cancel.
    pub fn cancel(&mut self) {
        self.control(KIND_CANCEL, &[]);
    }

    /// Appends the call's result; false (and nothing appended) when it is
    /// longer than [`MAX_RESULT`].
    pub fn result(&mut self, outcome: &[u8]) -> bool {
        if outcome.len() > MAX_RESULT {
            return false;
        }
        self.control(KIND_RESULT, outcome);
        true
    }

    /// Bytes buffered, including an open batch.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes of the open batch's body so far (0 when none is open).
    pub fn batch_len(&self) -> usize {
        self.open_data.map_or(0, |s| self.end - s - MESSAGE_HEADER)
    }

    /// Closes any open batch and returns everything buffered.
    pub fn bytes(&mut self) -> &[u8] {
        self.close_data();
        &self.buf[self.start..self.end]
    }

    /// Forgets the first `n` bytes, once written.
    pub fn consume(&mut self, n: usize) {
        self.close_data();
        assert!(n <= self.len(), "consumed more than was buffered");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer is reused: written bytes leave by a cursor, a new item's
    /// room holds stale bytes, and partial writes followed by more items
    /// still put exactly the messages on the wire, in order.
    #[test]
    fn a_reused_buffer_sends_exactly_what_was_committed() {
        let mut enc = LinkEncoder::new();
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for round in 0..50u8 {
            let len = (round as usize * 37) % 300;
            let room = enc.begin_item(len + 20, 1);
            assert_eq!(room.len(), len + 20);
            room[..len].fill(round);
            enc.finish_item(len, 1);
            want.push((vec![round; len], 1u64));
            if round % 7 == 3 {
                let begun = enc.begin_item(10, 1);
                begun.fill(0xee);
                enc.abandon_item();
            }
            // Write a part of what is buffered, as a full socket would.
            let n = enc.bytes().len() / 3;
            wire.extend_from_slice(&enc.bytes()[..n]);
            enc.consume(n);
        }
        wire.extend_from_slice(enc.bytes());
        let n = enc.bytes().len();
        enc.consume(n);
        assert!(enc.is_empty());
        let mut got = Vec::new();
        let mut rest = &wire[..];
        while let Some((msg, used)) = decode(rest, 1 << 20).unwrap() {
            let LinkMessage::Data(items) = msg else {
                panic!("only data was sent: {msg:?}");
            };
            got.extend(items.map(|(d, c)| (d.to_vec(), c)));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(got, want);
    }

    #[test]
    fn batches_round_trip() {
        let mut enc = LinkEncoder::new();
        enc.push_item(b"one", 1);
        enc.push_item(b"", 1);
        enc.push_item(b"three", 1);
        enc.credit(77);
        enc.push_item(b"four", 4);
        enc.blob(1 << 30, 1);
        enc.error("boom");
        enc.end();
        assert!(enc.result(b"ok"));
        assert!(
            !enc.result(&vec![0; MAX_RESULT + 1]),
            "too long for the slot"
        );
        let wire = enc.bytes().to_vec();
        let mut rest = &wire[..];
        let mut seen = Vec::new();
        while let Some((msg, used)) = decode(rest, 1 << 16).unwrap() {
            match msg {
                LinkMessage::Data(items) => seen.push(format!(
                    "data{:?}",
                    items.map(|(d, c)| (d.to_vec(), c)).collect::<Vec<_>>()
                )),
                other => seen.push(format!("{other:?}")),
            }
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            seen,
            vec![
                "data[([111, 110, 101], 1), ([], 1), ([116, 104, 114, 101, 101], 1)]",
                "Credit(77)",
                "data[([102, 111, 117, 114], 4)]",
                "Blob { size: 1073741824, charge: 1 }",
                "Error(\"boom\")",
                "End",
                "Result([111, 107])"
            ]
        );
    }

    #[test]
    fn hostile_messages_are_rejected() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0x7f, 1], 1024),
            Err(LinkError::TooLarge {
                len: 0x7fff_ffff,
                max: 1024
            })
        );
        assert_eq!(
            decode(&[0, 0, 0, 0, 99], 1024),
            Err(LinkError::UnknownKind(99))
        );
        // An item claiming more bytes than its message holds.
        let mut m = vec![12, 0, 0, 0, KIND_DATA];
        m.extend_from_slice(&100u32.to_le_bytes());
        m.extend_from_slice(&1u64.to_le_bytes());
        assert!(matches!(decode(&m, 1024), Err(LinkError::Malformed(_))));
        assert!(matches!(
            decode(&[3, 0, 0, 0, KIND_CREDIT, 1, 2, 3], 1024),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[1, 0, 0, 0, KIND_END, 0], 1024),
            Err(LinkError::Malformed(_))
        ));
        // A blob message whose body is not a size and a charge.
        assert!(matches!(
            decode(&[3, 0, 0, 0, KIND_BLOB, 1, 2, 3], 1024),
            Err(LinkError::Malformed(_))
        ));
        // A result longer than any result slot, even where the port allows it.
        let mut m = ((MAX_RESULT + 1) as u32).to_le_bytes().to_vec();
        m.push(KIND_RESULT);
        m.resize(MESSAGE_HEADER + MAX_RESULT + 1, 0);
        assert!(matches!(decode(&m, 1 << 20), Err(LinkError::Malformed(_))));
    }
}
