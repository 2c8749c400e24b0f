//! Deadlines: a call may carry the time it has left. The broker keeps the
//! live calls with one in order of their deadline; the event loop sleeps no
//! longer than the next one ([`Router::next_deadline`]) and hands each turn's
//! time to [`Router::expire`], which fails every call whose deadline passed:
//! the service is told to stop (a `cancel`, as when the caller cancels) and
//! the caller gets the result `DeadlineExceeded`, whatever the service
//! answers later.

use std::time::Instant;

use shmbus::frame::{ErrorCode, Frame};
use tracing::info;

use super::{remote, send, Output, PortMaker, Router};

impl<P: PortMaker> Router<P> {
    /// When the soonest deadline of a live call passes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Fails the calls whose deadline is `now` or earlier, soonest first:
    /// a `cancel` to the service, then (after the monitor's error event,
    /// for a stream) the result `DeadlineExceeded` to the caller.
    pub fn expire(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(live) = self.calls.get(&id) else {
                continue;
            };
            info!(call = id, stream = ?live.stream.as_ref().map(|s| s.stream), "deadline exceeded");
            out.push(send(live.service_conn, Frame::Cancel { call: id }));
            let error = remote(ErrorCode::DeadlineExceeded, "the call's deadline passed");
            out.extend(self.finish_call(id, Err(error)));
        }
        out
    }
}
