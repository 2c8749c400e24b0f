//! What bridges say to each other over Zenoh, without I/O: the key
//! expressions and the messages (postcard).
//!
//! Keys, for a node `N` and a service `S`:
//!
//! | key | what |
//! |---|---|
//! | `shmbus/node/N` | liveliness token: bridge `N` is up |
//! | `shmbus/export/N/S` | liveliness token: `N` exports `S` |
//! | `shmbus/methods/N/S` | queryable: `S`'s methods ([`Methods`]) |
//! | `shmbus/call/N/S` | queryable: open a call to `S` ([`CallOpen`]) |
//! | `shmbus/stream/CALLEE/CALLER/ID/{to_callee,to_caller}/{data,ctl}` | one call's messages ([`Data`], [`Ctl`]) |
//!
//! Items, the stream's end and the call's result travel in order on a
//! direction's `data` key; credit and cancel on its `ctl` key, so that a
//! grant is never stuck behind an item its receiver cannot write yet.

use serde::{Deserialize, Serialize};
use shmbus::frame::{MethodSpec, RemoteError};

pub mod items;

/// The bytes a receiving bridge lets be in flight toward it on one
/// direction before it grants more: what each bridge holds per stream, at
/// most. Items messages count as [`items::charge`] says.
pub const WINDOW_BYTES: u64 = 4 << 20;

/// The methods of an exported service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Methods(pub Vec<MethodSpec>);

/// A call, from the caller's bridge to the service's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallOpen {
    /// The method.
    pub method: String,
    /// Its arguments.
    pub args: Vec<u8>,
    /// Microseconds left before the call's deadline, if it has one.
    pub time_left_us: Option<u64>,
    /// The call's key, unique to the caller's bridge.
    pub id: String,
    /// The caller's node: when it goes away, the call is cancelled.
    pub caller: String,
    /// The ring the service's side asks its broker for: one whose items
    /// are as large as the caller's port takes, so that an item fits both.
    pub ring: u32,
    /// The caller's credit, for the call on the service's side: the far
    /// service writes under the credit its caller chose.
    pub credit: Option<shmbus::credit::CreditSpec>,
}

/// The ring that carries items as large as a port whose largest is
/// `max_item` (a ring's record is at most half of it), from the default
/// ring up to [`MAX_RING`].
pub fn ring_for(max_item: usize) -> u32 {
    let want = max_item
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX);
    want.clamp(shmbus::DEFAULT_RING_SIZE as usize, MAX_RING as usize) as u32
}

/// The largest ring a bridge asks for on behalf of a far caller.
pub const MAX_RING: u32 = 64 << 20;

/// What the service's bridge answers a [`CallOpen`] with.
pub type Opened = Result<(), RemoteError>;

/// A direction's ordered messages other than items (which go packed, see
/// [`items`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// stream-end.
    End,
    /// stream-error.
    Error(String),
    /// The call's result (toward the caller only, after its stream).
    Result(Result<Vec<u8>, RemoteError>),
}

/// First byte of a `data` message holding items, packed as [`items`]
/// describes: their bytes go unencoded, copied once on each side (into the
/// message, out of it into the local port) and never walked byte by byte.
pub const ITEMS: u8 = 0;

/// First byte of a `data` message holding a [`Data`] (postcard).
pub const DATA: u8 = 1;

/// A `data` message carrying `d`.
pub fn data_message(d: &Data) -> Vec<u8> {
    let mut m = vec![DATA];
    m.extend_from_slice(&encode(d));
    m
}

/// What a `data` message's first byte says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Items: records after the tag ([`items`]).
    Items,
    /// A [`Data`]: decode the bytes after the tag.
    Data,
}

/// The kind of a `data` message from its first byte; `None` for an empty
/// message or an unknown tag.
pub fn data_kind(first: Option<u8>) -> Option<DataKind> {
    match first? {
        ITEMS => Some(DataKind::Items),
        DATA => Some(DataKind::Data),
        _ => None,
    }
}

/// A direction's control messages, against its flow.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Ctl {
    /// The receiving bridge has written on items messages of this much
    /// charge ([`items::charge`]): the sender may have up to
    /// [`WINDOW_BYTES`] more in flight.
    Consumed(u64),
    /// The caller cancelled.
    Cancel,
}

/// A node name: letters, digits, `-` and `_`, 1 to 64 of them (it is one
/// chunk of every key).
pub fn valid_node(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A service name that fits in a key: no empty chunk, no wildcard.
pub fn valid_service_key(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('/')
            .all(|c| !c.is_empty() && !c.contains(['*', '$', '?', '#']))
}

/// `shmbus/node/N`.
pub fn node_key(node: &str) -> String {
    format!("shmbus/node/{node}")
}

/// `shmbus/export/N/S`.
pub fn export_key(node: &str, service: &str) -> String {
    format!("shmbus/export/{node}/{service}")
}

/// The node and service of an export token's key.
pub fn parse_export_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("shmbus/export/")?;
    let (node, service) = rest.split_once('/')?;
    (valid_node(node) && valid_service_key(service)).then_some((node, service))
}

/// `shmbus/methods/N/S`.
pub fn methods_key(node: &str, service: &str) -> String {
    format!("shmbus/methods/{node}/{service}")
}

/// `shmbus/call/N/S`.
pub fn call_key(node: &str, service: &str) -> String {
    format!("shmbus/call/{node}/{service}")
}

/// Which way a call's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Caller to service.
    ToCallee,
    /// Service to caller.
    ToCaller,
}

/// `shmbus/stream/CALLEE/CALLER/ID/{to_callee,to_caller}/{data,ctl}`: the
/// key of one call's messages, a call `ID` unique to the caller's node.
pub fn stream_key(callee: &str, caller: &str, id: &str, way: Way, ctl: bool) -> String {
    let way = match way {
        Way::ToCallee => "to_callee",
        Way::ToCaller => "to_caller",
    };
    let kind = if ctl { "ctl" } else { "data" };
    format!("shmbus/stream/{callee}/{caller}/{id}/{way}/{kind}")
}

/// The keys of every call's messages toward `node`: as the callee, the
/// data its callers send and their grants for what it sends; as the
/// caller, the data its callees send and their grants. A bridge
/// subscribes to these once.
pub fn streams_toward(node: &str) -> [String; 4] {
    [
        format!("shmbus/stream/{node}/*/*/to_callee/data"),
        format!("shmbus/stream/{node}/*/*/to_caller/ctl"),
        format!("shmbus/stream/*/{node}/*/to_caller/data"),
        format!("shmbus/stream/*/{node}/*/to_callee/ctl"),
    ]
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("bridge messages serialize")
}

/// Decodes a message from a peer bridge.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_what_is_not_a_name() {
        let k = export_key("hostb", "media/big");
        assert_eq!(parse_export_key(&k), Some(("hostb", "media/big")));
        assert_eq!(parse_export_key("shmbus/export/hostb"), None);
        assert_eq!(parse_export_key("shmbus/export/ho st/x"), None);
        assert_eq!(parse_export_key("shmbus/export/a/b//c"), None);
        assert!(!valid_node("a/b") && !valid_node("") && valid_node("host-b_2"));
        let k = stream_key("b", "a", "7-1", Way::ToCaller, true);
        assert_eq!(k, "shmbus/stream/b/a/7-1/to_caller/ctl");
        // Each key of a call between a and b reaches the one node it is for.
        let reaches = |node: &str, key: &str| {
            let key = zenoh::key_expr::KeyExpr::try_from(key).unwrap();
            streams_toward(node).iter().any(|p| {
                zenoh::key_expr::KeyExpr::try_from(p.as_str())
                    .unwrap()
                    .intersects(&key)
            })
        };
        for (way, ctl, to) in [
            (Way::ToCallee, false, "b"),
            (Way::ToCaller, true, "b"),
            (Way::ToCaller, false, "a"),
            (Way::ToCallee, true, "a"),
        ] {
            let key = stream_key("b", "a", "7-1", way, ctl);
            let other = if to == "a" { "b" } else { "a" };
            assert!(reaches(to, &key) && !reaches(other, &key), "{key}");
            assert!(!reaches("c", &key) && !reaches("ab", &key), "{key}");
        }
    }

    #[test]
    fn the_far_ring_carries_the_near_ports_items() {
        let max = shmbus::ring::max_record(8 << 20);
        assert_eq!(ring_for(max), 8 << 20);
        assert_eq!(ring_for(0), shmbus::DEFAULT_RING_SIZE);
        assert_eq!(ring_for(usize::MAX), MAX_RING);
    }

    #[test]
    fn a_data_message_says_what_it_holds() {
        let d = data_message(&Data::End);
        assert_eq!(data_kind(d.first().copied()), Some(DataKind::Data));
        assert_eq!(decode::<Data>(&d[1..]).unwrap(), Data::End);
        let mut p = items::Packer::new();
        assert!(p.pack(b"hello"));
        assert_eq!(data_kind(p.take().first().copied()), Some(DataKind::Items));
        assert_eq!(data_kind(None), None);
        assert_eq!(data_kind(Some(7)), None);
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Data::End,
            Data::Error("boom".into()),
            Data::Result(Ok(b"ok".to_vec())),
        ] {
            assert_eq!(decode::<Data>(&encode(&m)).unwrap(), m);
        }
        assert_eq!(
            decode::<Ctl>(&encode(&Ctl::Consumed(7))).unwrap(),
            Ctl::Consumed(7)
        );
        assert!(decode::<Data>(&[99]).is_err());
    }
}
