//! The caller's side: the services other nodes export, registered on the
//! local broker as `NODE/SERVICE` (all on one connection; dropping a
//! service withdraws its name), and their calls carried to that node.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmbus::frame::{ErrorCode, RemoteError};
use shmbus_client::{Connection, IncomingCall};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zenoh::sample::SampleKind;
use zenoh::Session;

use crate::relay::{pump_in, pump_out, watch_ctl, Streams};
use crate::wire::{self, CallOpen, Ctl, Methods, Opened, Way};

/// Nodes seen alive, each with a flag that turns false when it goes.
type Nodes = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

/// Follows other nodes' exports and serves them locally until the
/// session closes.
pub async fn run(
    session: Session,
    streams: Streams,
    socket: PathBuf,
    node: String,
) -> Result<(), String> {
    let conn = Connection::connect_async(&socket)
        .await
        .map_err(|e| e.to_string())?;
    let nodes: Nodes = Arc::default();
    let alive = session
        .liveliness()
        .declare_subscriber("shmbus/node/*")
        .history(true)
        .await
        .map_err(|e| format!("zenoh liveliness: {e}"))?;
    let n = nodes.clone();
    tokio::spawn(async move {
        while let Ok(s) = alive.recv_async().await {
            let Some(name) = s.key_expr().as_str().strip_prefix("shmbus/node/") else {
                continue;
            };
            node_seen(&mut n.lock().unwrap(), name, s.kind());
        }
    });
    let exports = session
        .liveliness()
        .declare_subscriber("shmbus/export/**")
        .history(true)
        .await
        .map_err(|e| format!("zenoh liveliness: {e}"))?;
    let mut served: HashMap<(String, String), JoinHandle<()>> = HashMap::new();
    let counter = Arc::new(AtomicU64::new(0));
    while let Ok(s) = exports.recv_async().await {
        let key = s.key_expr().as_str().to_string();
        let Some((far, service)) = wire::parse_export_key(&key) else {
            continue;
        };
        if far == node {
            continue;
        }
        let id = (far.to_string(), service.to_string());
        match s.kind() {
            SampleKind::Delete => {
                if let Some(task) = served.remove(&id) {
                    // Its service handle goes with it: the name is withdrawn.
                    task.abort();
                }
            }
            SampleKind::Put => {
                if served.contains_key(&id) {
                    continue;
                }
                let ctx = Import {
                    session: session.clone(),
                    streams: streams.clone(),
                    conn: conn.clone(),
                    node: node.clone(),
                    far: id.0.clone(),
                    service: id.1.clone(),
                    nodes: nodes.clone(),
                    counter: counter.clone(),
                };
                served.insert(id, tokio::spawn(ctx.serve()));
            }
        }
    }
    Ok(())
}

/// Records what a liveliness sample says of node `name`: seen (`Put`), it
/// gets a flag that calls to it watch; gone (`Delete`), its flag turns
/// false and goes. A node seen again keeps its flag: a subscriber with
/// history may be handed a token twice (from the history and live), and a
/// new flag would drop the old one, which its calls take for the node
/// going away.
fn node_seen(nodes: &mut HashMap<String, watch::Sender<bool>>, name: &str, kind: SampleKind) {
    match kind {
        SampleKind::Put => {
            nodes
                .entry(name.to_string())
                .or_insert_with(|| watch::channel(true).0);
        }
        SampleKind::Delete => {
            if let Some(flag) = nodes.remove(name) {
                let _ = flag.send(false);
            }
        }
    }
}

/// The first wait before an import is tried again.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between tries of an import.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One imported service.
#[derive(Clone)]
struct Import {
    session: Session,
    streams: Streams,
    /// The local broker connection every imported service is registered on.
    conn: Connection,
    node: String,
    far: String,
    service: String,
    nodes: Nodes,
    counter: Arc<AtomicU64>,
}

impl Import {
    /// Registers `far/service` locally and serves its calls, for as long
    /// as the far node exports it (the task is aborted when it stops). A
    /// methods query that goes unanswered or a registration the local
    /// broker refuses (the name taken, a quota) is tried again, waiting
    /// from 0.1 s up to [`RETRY_MAX`] between tries; each new error is
    /// logged once.
    async fn serve(self) {
        let mut wait = RETRY_MIN;
        let mut last_error = None;
        loop {
            match self.serve_inner().await {
                Ok(()) => wait = RETRY_MIN,
                Err(e) if last_error.as_ref() != Some(&e) => {
                    eprintln!(
                        "shmbus-bridge: {}/{}: {e} (trying again)",
                        self.far, self.service
                    );
                    last_error = Some(e);
                }
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    async fn serve_inner(&self) -> Result<(), String> {
        let replies = self
            .session
            .get(wire::methods_key(&self.far, &self.service))
            .timeout(Duration::from_secs(2))
            .await
            .map_err(|e| format!("zenoh query: {e}"))?;
        let methods = match replies.recv_async().await {
            Ok(reply) => match reply.result() {
                Ok(sample) => wire::decode::<Methods>(&sample.payload().to_bytes())
                    .map_err(|e| format!("malformed methods: {e}"))?,
                Err(_) => return Err("the far bridge refused the methods query".into()),
            },
            Err(_) => return Err("no answer to the methods query".into()),
        };
        let name = format!("{}/{}", self.far, self.service);
        let service = self
            .conn
            .register_async(&name, &methods.0)
            .await
            .map_err(|e| e.to_string())?;
        let mut running: HashSet<u64> = HashSet::new();
        while let Some(call) = service.next_async().await.map_err(|e| e.to_string())? {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            running.insert(n);
            let me = self.clone();
            tokio::spawn(async move { me.relay(call, n).await });
        }
        Ok(())
    }

    /// Carries one call to the far node and its streams and result back.
    async fn relay(&self, mut call: IncomingCall, n: u64) {
        let fail = |m: String| RemoteError {
            code: ErrorCode::Failed,
            message: m,
        };
        let Some(mut gone) = self
            .nodes
            .lock()
            .unwrap()
            .get(&self.far)
            .map(|f| f.subscribe())
        else {
            let _ = call
                .respond_async(Err(fail(format!("node {} is not reachable", self.far))))
                .await;
            return;
        };
        let id = format!("{}-{n}", std::process::id());
        let keys = |way, ctl| wire::stream_key(&self.far, &self.node, &id, way, ctl);
        let s = &self.session;
        // Open before the call goes: the far side sends once it answers.
        let (data_in, ctl_in) = (
            self.streams.open(keys(Way::ToCaller, false)),
            self.streams.open(keys(Way::ToCallee, true)),
        );
        let outs = || {
            Ok::<_, String>((
                self.streams.out(keys(Way::ToCallee, false))?,
                self.streams.out(keys(Way::ToCaller, true))?,
            ))
        };
        let (data_out, ctl_out) = match outs() {
            Ok(l) => l,
            Err(e) => {
                let _ = call.respond_async(Err(fail(e))).await;
                return;
            }
        };
        let credit = call
            .sender()
            .map(|t| t.credit())
            .or_else(|| call.receiver().and_then(|r| r.credit()));
        let max_item = [
            call.sender().map(|t| t.max_item()),
            call.receiver().map(|r| r.max_item()),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let open = CallOpen {
            method: call.method().to_string(),
            args: call.args().to_vec(),
            time_left_us: call.time_left().map(|d| d.as_micros() as u64),
            id: id.clone(),
            caller: self.node.clone(),
            ring: wire::ring_for(max_item),
            credit,
        };
        let opened = async {
            let replies = s
                .get(wire::call_key(&self.far, &self.service))
                .payload(wire::encode(&open))
                // The answer as it comes, not at the query's end: the far
                // bridge streams once it has answered, and the end may come
                // after items that fill this side's queue until the answer
                // is read.
                .consolidation(zenoh::query::ConsolidationMode::None)
                .timeout(Duration::from_secs(2))
                .await
                .map_err(|e| format!("zenoh query: {e}"))?;
            let reply = replies
                .recv_async()
                .await
                .map_err(|_| format!("node {} did not answer the call", self.far))?;
            let sample = reply
                .result()
                .map_err(|_| format!("node {} refused the call", self.far))?;
            wire::decode::<Opened>(&sample.payload().to_bytes())
                .map_err(|e| format!("malformed answer: {e}"))
        };
        match opened.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = call.respond_async(Err(e)).await;
                return;
            }
            Err(e) => {
                let _ = call.respond_async(Err(fail(e))).await;
                return;
            }
        }
        let grants = watch_ctl(ctl_in, Box::pin(std::future::pending()));
        let (rx, tx) = (call.take_receiver(), call.take_sender());
        let up = async {
            match rx {
                Some(rx) => pump_out(rx, &data_out, grants.consumed.clone(), None).await,
                None => Ok(()),
            }
        };
        let far_gone_reason = {
            let mut gone = gone.clone();
            let reason = format!("node {} went away", self.far);
            async move {
                let _ = gone.wait_for(|alive| !*alive).await;
                reason
            }
        };
        let down = pump_in(tx, &data_in, &ctl_out, true, far_gone_reason);
        let streams = async { tokio::join!(up, down).1 };
        tokio::pin!(streams);
        let far_gone = async {
            let _ = gone.wait_for(|alive| !*alive).await.map(|_| ());
        };
        tokio::pin!(far_gone);
        let aborted = || RemoteError {
            code: ErrorCode::Aborted,
            message: "cancelled by the caller".into(),
        };
        let outcome = loop {
            tokio::select! {
                r = &mut streams => break match r {
                    Ok(Some(result)) => result,
                    // The far side is not done: whatever stopped this side
                    // (the caller cancelled or went away), stop it too.
                    other => {
                        let _ = ctl_out.send(&Ctl::Cancel).await;
                        match other {
                            _ if call.is_cancelled() => Err(aborted()),
                            Err(e) => Err(fail(e)),
                            _ => Err(fail(format!("the bridge to node {} closed", self.far))),
                        }
                    }
                },
                _ = &mut far_gone => {
                    // The stream toward the caller fails with the reason
                    // first, then the call.
                    let _ = tokio::time::timeout(Duration::from_millis(100), &mut streams).await;
                    break Err(fail(format!("node {} went away", self.far)));
                }
                // A caller that cancels: the far call is cancelled.
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if call.is_cancelled() {
                        let _ = ctl_out.send(&Ctl::Cancel).await;
                        break Err(aborted());
                    }
                }
            }
        };
        let _ = call.respond_async(outcome).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_seen_again_keeps_its_calls_and_a_node_gone_ends_them() {
        let mut nodes = HashMap::new();
        node_seen(&mut nodes, "b", SampleKind::Put);
        let call = nodes["b"].subscribe();
        // A subscriber with history may be handed a token it already had.
        node_seen(&mut nodes, "b", SampleKind::Put);
        assert!(
            matches!(call.has_changed(), Ok(false)),
            "a repeated sighting must not look like the node going"
        );
        assert!(*call.borrow());
        node_seen(&mut nodes, "b", SampleKind::Delete);
        assert!(!*call.borrow(), "a node gone says so before its flag goes");
        assert!(!nodes.contains_key("b"));
    }
}
