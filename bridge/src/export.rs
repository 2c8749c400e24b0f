//! The service's side: this node's exported services, announced to the
//! other nodes, and the calls they make to them, made on the local broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmbus::frame::{ErrorCode, RemoteError};
use shmbus_client::Connection;
use zenoh::Session;

use crate::relay::{pump_in, pump_out, watch_ctl, Streams};
use crate::wire::{self, CallOpen, Data, Methods, Opened, Way};

/// Exported services by name, with their methods.
type Exported = Arc<Mutex<HashMap<String, Methods>>>;

fn remote(code: ErrorCode, message: String) -> RemoteError {
    RemoteError { code, message }
}

/// A local call's error as the far caller gets it: the broker's verdict as
/// it is, a deadline as a deadline (the client reports it apart from the
/// broker's errors), anything else as a failure.
fn far_error(e: shmbus_client::Error) -> RemoteError {
    match e {
        shmbus_client::Error::Remote(r) => r,
        shmbus_client::Error::DeadlineExceeded => remote(
            ErrorCode::DeadlineExceeded,
            "the call's deadline passed".into(),
        ),
        other => remote(ErrorCode::Failed, other.to_string()),
    }
}

/// Glob match with `*` and `?`.
pub fn glob(pattern: &str, name: &str) -> bool {
    shmbus::glob::glob(pattern, name)
}

/// Announces the local services that match `patterns` (every second, as
/// they come and go), answers method queries, and serves calls to them.
pub async fn run(
    session: Session,
    streams: Streams,
    conn: Connection,
    node: String,
    patterns: Vec<String>,
) -> Result<(), String> {
    let exported: Exported = Arc::default();
    let me = std::process::id() as i32;
    // Method queries.
    let methods = session
        .declare_queryable(format!("shmbus/methods/{node}/**"))
        .await
        .map_err(|e| format!("zenoh queryable: {e}"))?;
    let ex = exported.clone();
    let prefix = format!("shmbus/methods/{node}/");
    tokio::spawn(async move {
        while let Ok(q) = methods.recv_async().await {
            let key = q.key_expr().as_str().to_string();
            let name = key.strip_prefix(&prefix).unwrap_or("").to_string();
            let found = ex.lock().unwrap().get(&name).cloned();
            if let Some(m) = found {
                let _ = q.reply(key, wire::encode(&m)).await;
            }
        }
    });
    // Calls.
    let calls = session
        .declare_queryable(format!("shmbus/call/{node}/**"))
        .await
        .map_err(|e| format!("zenoh queryable: {e}"))?;
    let (ex, s, st, c, n) = (
        exported.clone(),
        session.clone(),
        streams.clone(),
        conn.clone(),
        node.clone(),
    );
    tokio::spawn(async move {
        let prefix = format!("shmbus/call/{n}/");
        while let Ok(q) = calls.recv_async().await {
            let key = q.key_expr().as_str().to_string();
            let service = key.strip_prefix(&prefix).unwrap_or("").to_string();
            let open = q
                .payload()
                .map(|p| p.to_bytes().to_vec())
                .and_then(|b| wire::decode::<CallOpen>(&b).ok());
            let (s, st, c, n) = (s.clone(), st.clone(), c.clone(), n.clone());
            let known = ex.lock().unwrap().contains_key(&service);
            tokio::spawn(async move {
                let reply = |r: Opened| wire::encode(&r);
                let Some(open) = open.filter(|_| known) else {
                    let e = remote(
                        ErrorCode::NoSuchService,
                        format!("{n} exports no service {service}"),
                    );
                    let _ = q.reply(key, reply(Err(e))).await;
                    return;
                };
                serve_call(s, st, c, n, service, open, |r| async move {
                    let _ = q.reply(key, reply(r)).await;
                })
                .await;
            });
        }
    });
    // The announcements.
    let mut tokens: HashMap<String, zenoh::liveliness::LivelinessToken> = HashMap::new();
    loop {
        // The broker gone, the bridge goes too (for systemd to start it
        // again): its exports would name services no broker serves.
        // Awaited, not waited for: a broker slow to answer must not hold
        // a runtime thread that relays share.
        let snapshot = conn
            .list_async()
            .await
            .map_err(|e| format!("lost the broker: {e}"))?;
        let now: HashMap<String, Methods> = snapshot
            .services
            .into_iter()
            .filter(|s| s.pid != me && wire::valid_service_key(&s.name))
            .filter(|s| patterns.iter().any(|p| glob(p, &s.name)))
            .map(|s| (s.name, Methods(s.methods)))
            .collect();
        tokens.retain(|name, _| now.contains_key(name));
        let new: Vec<String> = now
            .keys()
            .filter(|name| !tokens.contains_key(*name))
            .cloned()
            .collect();
        // Answerable before announced: a far bridge asks for a name's
        // methods as soon as its token arrives, and asks once.
        *exported.lock().unwrap() = now;
        for name in new {
            let token = session
                .liveliness()
                .declare_token(wire::export_key(&node, &name))
                .await
                .map_err(|e| format!("zenoh token: {e}"))?;
            tokens.insert(name, token);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Completes when the caller's node goes away (its liveliness token is
/// dropped); `None` for a name that is not a node's.
async fn caller_gone(
    session: &Session,
    caller: &str,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    if !wire::valid_node(caller) {
        return None;
    }
    let sub = session
        .liveliness()
        .declare_subscriber(wire::node_key(caller))
        .history(true)
        .await
        .ok()?;
    Some(async move {
        while let Ok(s) = sub.recv_async().await {
            if s.kind() == zenoh::sample::SampleKind::Delete {
                return;
            }
        }
    })
}

/// Makes one call on the local broker for a far caller, answers its
/// opening with `answer`, then relays its streams and its result.
async fn serve_call<F, Fut>(
    session: Session,
    streams: Streams,
    conn: Connection,
    node: String,
    service: String,
    open: CallOpen,
    answer: F,
) where
    F: FnOnce(Opened) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut builder = conn
        .call(&service, &open.method)
        .args(open.args)
        .ring_size(open.ring.clamp(1 << 16, wire::MAX_RING));
    if let Some(us) = open.time_left_us {
        builder = builder.timeout(Duration::from_micros(us));
    }
    if let Some(credit) = open.credit {
        if let Err(e) = credit.validate() {
            let e = format!("the far bridge asked for invalid credit: {e}");
            return answer(Err(remote(ErrorCode::Failed, e))).await;
        }
        builder = builder.credit(credit);
    }
    if !wire::valid_node(&open.caller) || !wire::valid_node(&open.id) {
        let e = format!("the far bridge named its call {}/{}", open.caller, open.id);
        return answer(Err(remote(ErrorCode::Failed, e))).await;
    }
    let keys = |way, ctl| wire::stream_key(&node, &open.caller, &open.id, way, ctl);
    // Open before the call is answered: the caller sends once it is.
    let (data_in, ctl_in) = (
        streams.open(keys(Way::ToCallee, false)),
        streams.open(keys(Way::ToCaller, true)),
    );
    let outs = || {
        Ok::<_, String>((
            streams.out(keys(Way::ToCaller, false))?,
            streams.out(keys(Way::ToCallee, true))?,
        ))
    };
    let (data_out, ctl_out) = match outs() {
        Ok(l) => l,
        Err(e) => return answer(Err(remote(ErrorCode::Failed, e))).await,
    };
    let mut call = match builder.start_async().await {
        Ok(call) => call,
        Err(e) => return answer(Err(far_error(e))).await,
    };
    answer(Ok(())).await;
    // The caller's node going away cancels the call, as its cancel would.
    let gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        match caller_gone(&session, &open.caller).await {
            Some(f) => Box::pin(f),
            None => Box::pin(std::future::pending()),
        };
    let grants = watch_ctl(ctl_in, gone);
    let cancel = call.cancel_handle();
    let mut cancelled = grants.cancelled.clone();
    tokio::spawn(async move {
        if cancelled.wait_for(|c| *c).await.is_ok() {
            let _ = cancel.cancel();
        }
    });
    let (rx, tx) = (call.take_receiver(), call.take_sender());
    let down = async {
        match rx {
            Some(rx) => {
                let cancelled = Some(grants.cancelled.clone());
                pump_out(rx, &data_out, grants.consumed.clone(), cancelled).await
            }
            None => Ok(()),
        }
    };
    let up = async {
        if tx.is_some() {
            let caller_stays = std::future::pending();
            pump_in(tx, &data_in, &ctl_out, false, caller_stays)
                .await
                .map(|_| ())
        } else {
            Ok(())
        }
    };
    let _ = tokio::join!(down, up);
    let result = call.finish_async().await.map_err(far_error);
    let _ = data_out.send_data(&Data::Result(result)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_deadline_reaches_the_caller_as_a_deadline() {
        let e = far_error(shmbus_client::Error::DeadlineExceeded);
        assert_eq!(e.code, ErrorCode::DeadlineExceeded);
        let r = remote(ErrorCode::PeerGone, "gone".into());
        assert_eq!(far_error(shmbus_client::Error::Remote(r.clone())), r);
        assert_eq!(
            far_error(shmbus_client::Error::BrokerGone).code,
            ErrorCode::Failed
        );
    }
}
