//! A call's messages over Zenoh: [`Out`] publishes on one of its keys,
//! [`In`] takes what arrives on one. A bridge subscribes once, at start, to
//! every call's keys toward it ([`Streams`]), and hands each message to the
//! call whose key it names: a call declares nothing on the network, so
//! opening one costs no declaration on either side, and no call's messages
//! wait behind another's.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use zenoh::key_expr::KeyExpr;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::Session;

use super::malformed;
use crate::wire::{self, Data, DataKind};

/// Messages one key may hold before its call reads them. A far bridge that
/// keeps to its window has fewer in flight (128 items messages, an end and
/// a result; a grant or a cancel for each message sent the other way), so
/// a key that overflows fails its own call and holds up nothing else.
const KEY_QUEUE: usize = 256;

/// Where an arriving message goes: the queue of the call that opened its
/// key, and whether that queue overflowed.
struct Route {
    queue: mpsc::Sender<Sample>,
    overflowed: Arc<AtomicBool>,
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// A bridge's subscriptions to every call's keys toward it, and the calls'
/// queues they fill.
#[derive(Clone)]
pub struct Streams {
    session: Session,
    routes: Routes,
    // Held for as long as any clone lives: the subscriptions stay.
    _subscribers: Arc<Vec<zenoh::pubsub::Subscriber<()>>>,
}

impl Streams {
    /// Subscribes to the keys of every call toward `node`, as callee and
    /// as caller ([`wire::streams_toward`]).
    pub async fn start(session: &Session, node: &str) -> Result<Streams, String> {
        let routes: Routes = Arc::default();
        let mut subscribers = Vec::new();
        for pattern in wire::streams_toward(node) {
            let r = routes.clone();
            let subscriber = session
                .declare_subscriber(pattern)
                .callback(move |sample| deliver(&r, sample))
                .await
                .map_err(|e| format!("zenoh subscriber: {e}"))?;
            subscribers.push(subscriber);
        }
        Ok(Streams {
            session: session.clone(),
            routes,
            _subscribers: Arc::new(subscribers),
        })
    }

    /// The messages that arrive on `key` from now on, until the returned
    /// [`In`] drops.
    pub fn open(&self, key: String) -> In {
        let (queue, rx) = mpsc::channel(KEY_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let route = Route {
            queue,
            overflowed: overflowed.clone(),
        };
        self.routes.lock().unwrap().insert(key.clone(), route);
        In {
            rx: Mutex::new(rx),
            overflowed,
            key,
            routes: self.routes.clone(),
        }
    }

    /// A publisher on `key`. It sends at once; its declaration, which
    /// lets Zenoh route each message without matching its key again, is
    /// made meanwhile and used once made.
    pub fn out(&self, key: String) -> Result<Out, String> {
        let key = KeyExpr::try_from(key).map_err(|e| format!("zenoh key: {e}"))?;
        let declared = Arc::new(OnceLock::new());
        let (session, k, d) = (self.session.clone(), key.clone(), declared.clone());
        tokio::spawn(async move {
            let publisher = session
                .declare_publisher(k)
                .congestion_control(CongestionControl::Block)
                .await;
            if let Ok(p) = publisher {
                let _ = d.set(p);
            }
        });
        Ok(Out {
            session: self.session.clone(),
            key,
            declared,
        })
    }
}

/// Hands `sample` to the queue of the call its key names, never waiting:
/// it runs on Zenoh's receiving thread. A message for no open key (a call
/// already over) is dropped.
fn deliver(routes: &Routes, sample: Sample) {
    let mut routes = routes.lock().unwrap();
    let key = sample.key_expr().as_str().to_string();
    let Some(route) = routes.get(&key) else {
        return;
    };
    if route.queue.try_send(sample).is_err() {
        // Full (the far bridge overran its window) or closed: the call's
        // queue goes, and its `In` ends with the reason.
        if let Some(route) = routes.remove(&key) {
            route.overflowed.store(true, Ordering::Release);
        }
    }
}

/// Publishes messages on one key, reliably, waiting (never dropping) when
/// Zenoh's queue is full: credit keeps what is in flight bounded.
pub struct Out {
    session: Session,
    key: KeyExpr<'static>,
    declared: Arc<OnceLock<zenoh::pubsub::Publisher<'static>>>,
}

impl Out {
    /// Sends one message (postcard).
    pub async fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), String> {
        self.put(wire::encode(msg)).await
    }

    /// Sends one [`Data`] on a `data` key.
    pub async fn send_data(&self, d: &Data) -> Result<(), String> {
        self.put(wire::data_message(d)).await
    }

    /// Sends a message as it is.
    pub(super) async fn put(&self, bytes: Vec<u8>) -> Result<(), String> {
        // Either way the message goes in order after the ones before it:
        // same session, key, priority and reliability.
        let sent = match self.declared.get() {
            Some(publisher) => publisher.put(bytes).await,
            None => {
                self.session
                    .put(&self.key, bytes)
                    .congestion_control(CongestionControl::Block)
                    .await
            }
        };
        sent.map_err(|e| format!("zenoh put: {e}"))
    }
}

/// A message on a `data` key.
pub enum Incoming {
    /// Items, still in Zenoh's buffers (records after a one-byte tag, see
    /// [`wire::items`]).
    Items(zenoh::bytes::ZBytes),
    /// Anything else.
    Data(Data),
}

/// The messages arriving on one key of a call, in order.
pub struct In {
    rx: Mutex<mpsc::Receiver<Sample>>,
    overflowed: Arc<AtomicBool>,
    key: String,
    routes: Routes,
}

impl In {
    /// The next message as it came; `None` when the session closed, an
    /// error when the far bridge sent more than the key holds.
    async fn next_sample(&self) -> Option<Result<Sample, String>> {
        match poll_fn(|cx| self.rx.lock().unwrap().poll_recv(cx)).await {
            Some(s) => Some(Ok(s)),
            // The queue's sender went with its route: dropped for overflow.
            None if self.overflowed.load(Ordering::Acquire) => Some(Err(format!(
                "the far bridge sent more than {KEY_QUEUE} messages unread on a key"
            ))),
            None => None,
        }
    }

    /// The next message; `None` when the session closed. A message that
    /// does not decode is an error naming it.
    pub async fn next<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, String>> {
        Some(self.next_sample().await?.and_then(|sample| {
            let bytes = sample.payload().to_bytes();
            wire::decode(&bytes).map_err(malformed)
        }))
    }

    /// The next message on a `data` key; `None` when the session closed.
    pub async fn next_data(&self) -> Option<Result<Incoming, String>> {
        Some(self.next_sample().await?.and_then(|sample| {
            let payload = sample.payload();
            let first = payload.slices().find(|s| !s.is_empty()).map(|s| s[0]);
            match wire::data_kind(first) {
                Some(DataKind::Items) => Ok(Incoming::Items(payload.clone())),
                Some(DataKind::Data) => wire::decode(&payload.to_bytes()[1..])
                    .map(Incoming::Data)
                    .map_err(malformed),
                None => Err(malformed("no such message")),
            }
        }))
    }

    /// True when no message waits: the far side has sent nothing more yet.
    pub fn is_idle(&self) -> bool {
        self.rx.lock().unwrap().is_empty()
    }
}

impl Drop for In {
    fn drop(&mut self) {
        self.routes.lock().unwrap().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{stream_key, Way};

    /// A session that reaches nothing: no listening, no scouting; what it
    /// puts reaches its own subscribers only.
    async fn lone_session() -> Session {
        let mut c = zenoh::Config::default();
        for (k, v) in [
            ("mode", "\"peer\""),
            ("listen/endpoints", "[]"),
            ("connect/endpoints", "[]"),
            ("scouting/multicast/enabled", "false"),
            ("scouting/gossip/enabled", "false"),
        ] {
            c.insert_json5(k, v).unwrap();
        }
        zenoh::open(c).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_key_goes_to_its_call_and_a_flood_fails_only_its_own() {
        let session = lone_session().await;
        let streams = Streams::start(&session, "a").await.unwrap();
        let key = |id: &str| stream_key("b", "a", id, Way::ToCaller, false);
        let (flooded, quiet) = (streams.open(key("1")), streams.open(key("2")));
        let (to_flooded, to_quiet) = (
            streams.out(key("1")).unwrap(),
            streams.out(key("2")).unwrap(),
        );
        // A key no call opened, and a key toward another node: dropped.
        streams
            .out(key("3"))
            .unwrap()
            .send_data(&Data::End)
            .await
            .unwrap();
        let elsewhere = stream_key("b", "c", "2", Way::ToCaller, false);
        streams
            .out(elsewhere)
            .unwrap()
            .send_data(&Data::End)
            .await
            .unwrap();
        for _ in 0..KEY_QUEUE + 1 {
            to_flooded.send_data(&Data::End).await.unwrap();
        }
        to_quiet.send_data(&Data::Error("x".into())).await.unwrap();
        // The quiet call gets its message and nothing else.
        match quiet.next_data().await {
            Some(Ok(Incoming::Data(Data::Error(m)))) => assert_eq!(m, "x"),
            _ => panic!("the quiet call's message did not arrive"),
        }
        assert!(quiet.is_idle());
        // The flooded one reads what its queue held, then the reason.
        let mut read = 0;
        let e = loop {
            match flooded.next_data().await {
                Some(Ok(Incoming::Data(Data::End))) => read += 1,
                Some(Err(e)) => break e,
                _ => panic!("the flooded call ended without its reason"),
            }
        };
        assert_eq!(read, KEY_QUEUE);
        assert!(e.contains("more than 256 messages"), "{e}");
        // A closed call's route goes with it.
        drop(quiet);
        assert_eq!(streams.routes.lock().unwrap().len(), 0);
        session.close().await.unwrap();
    }
}
