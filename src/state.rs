//! The stream state machine: IDLE → OPENING → ACTIVE → CLOSING → CLOSED
//! (see "Stream states" in `PROTOCOL.md` at the repository root).
//!
//! Pure bookkeeping: each peer drives one [`StreamLifecycle`] per stream with
//! the events it observes, and the lifecycle records every transition in order
//! so applications and tests can see the path a stream took.

#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};

/// The states a stream half passes through. Crosses the wire in
/// `stream-progress` reports; as text (JSON) it is spelled as [`name`](Self::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StreamState {
    /// Nothing sent yet.
    Idle,
    /// stream-open sent or received, the port not yet usable.
    Opening,
    /// The port is established: data and credit flow.
    Active,
    /// stream-end, stream-error or stream-cancel seen; cleanup pending.
    Closing,
    /// Cleanup complete.
    Closed,
}

impl StreamState {
    /// Upper-case name, as `PROTOCOL.md` and `stream-progress` reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            StreamState::Idle => "IDLE",
            StreamState::Opening => "OPENING",
            StreamState::Active => "ACTIVE",
            StreamState::Closing => "CLOSING",
            StreamState::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stream left ACTIVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// stream-end: the sender finished.
    End,
    /// stream-error with the sender's message.
    Error(String),
    /// stream-cancel: the receiver or caller gave up.
    Cancel,
    /// The port failed: peer gone or a protocol violation.
    Failed(String),
}

/// Events that move the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// stream-open was sent (broker) or received (peer).
    Open,
    /// The port is mapped and checked.
    PortEstablished,
    /// The stream left ACTIVE for this reason.
    Close(CloseCause),
    /// Cleanup finished: the port is released.
    Cleanup,
}

/// A transition the event did not allow from the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} is not allowed in state {state}")]
pub struct InvalidTransition {
    /// State when the event arrived.
    pub state: StreamState,
    /// The event.
    pub event: StreamEvent,
}

/// One stream's state plus the ordered list of states it passed through.
#[derive(Debug, Clone)]
pub struct StreamLifecycle {
    state: StreamState,
    history: Vec<StreamState>,
    cause: Option<CloseCause>,
}

impl Default for StreamLifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamLifecycle {
    /// A stream in IDLE.
    pub fn new() -> Self {
        StreamLifecycle {
            state: StreamState::Idle,
            history: vec![StreamState::Idle],
            cause: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> StreamState {
        self.state
    }

    /// Every state entered, in order, starting with IDLE.
    pub fn history(&self) -> &[StreamState] {
        &self.history
    }

    /// Why the stream closed, once it left ACTIVE.
    pub fn cause(&self) -> Option<&CloseCause> {
        self.cause.as_ref()
    }

    /// Ends the stream: CLOSING for `cause`, then CLOSED once cleanup is
    /// done. Closing a stream already closing or closed keeps the first
    /// cause. An error means the stream never opened: a bug of the caller.
    pub fn close(&mut self, cause: CloseCause) -> Result<StreamState, InvalidTransition> {
        self.apply(StreamEvent::Close(cause))?;
        self.apply(StreamEvent::Cleanup)
    }

    /// Applies an event. A second close while CLOSING or CLOSED keeps the first cause.
    pub fn apply(&mut self, event: StreamEvent) -> Result<StreamState, InvalidTransition> {
        use StreamState::*;
        let next = match (&self.state, &event) {
            (Idle, StreamEvent::Open) => Opening,
            (Opening, StreamEvent::PortEstablished) => Active,
            // A port that fails while opening still passes through CLOSING.
            (Opening | Active, StreamEvent::Close(cause)) => {
                self.cause = Some(cause.clone());
                Closing
            }
            (Closing | Closed, StreamEvent::Close(_)) => return Ok(self.state),
            (Closing, StreamEvent::Cleanup) => Closed,
            (Closed, StreamEvent::Cleanup) => return Ok(Closed),
            _ => {
                return Err(InvalidTransition {
                    state: self.state,
                    event,
                })
            }
        };
        self.state = next;
        self.history.push(next);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamState::*;

    #[test]
    fn normal_path_is_recorded_in_order() {
        let mut s = StreamLifecycle::new();
        s.apply(StreamEvent::Open).unwrap();
        s.apply(StreamEvent::PortEstablished).unwrap();
        s.apply(StreamEvent::Close(CloseCause::End)).unwrap();
        s.apply(StreamEvent::Close(CloseCause::Cancel)).unwrap();
        s.apply(StreamEvent::Cleanup).unwrap();
        assert_eq!(s.history(), &[Idle, Opening, Active, Closing, Closed]);
        assert_eq!(s.cause(), Some(&CloseCause::End));
    }

    #[test]
    fn close_runs_to_closed_once_and_keeps_the_first_cause() {
        let mut s = StreamLifecycle::new();
        assert!(s.close(CloseCause::End).is_err(), "a stream never opened");
        s.apply(StreamEvent::Open).unwrap();
        s.apply(StreamEvent::PortEstablished).unwrap();
        assert_eq!(s.close(CloseCause::Cancel), Ok(Closed));
        assert_eq!(s.close(CloseCause::End), Ok(Closed));
        assert_eq!(s.history(), &[Idle, Opening, Active, Closing, Closed]);
        assert_eq!(s.cause(), Some(&CloseCause::Cancel));
    }

    #[test]
    fn states_cross_the_wire_as_themselves() {
        for state in [Idle, Opening, Active, Closing, Closed] {
            let bytes = postcard::to_allocvec(&state).unwrap();
            assert_eq!(postcard::from_bytes::<StreamState>(&bytes).unwrap(), state);
        }
        assert!(postcard::from_bytes::<StreamState>(&[9]).is_err());
    }

    #[test]
    fn out_of_order_events_are_refused() {
        let mut s = StreamLifecycle::new();
        assert!(s.apply(StreamEvent::PortEstablished).is_err());
        assert!(s.apply(StreamEvent::Cleanup).is_err());
        s.apply(StreamEvent::Open).unwrap();
        assert!(s.apply(StreamEvent::Open).is_err());
        assert_eq!(s.state(), Opening);
    }
}
