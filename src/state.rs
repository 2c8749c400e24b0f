//! The stream state machine: IDLE → OPENING → ACTIVE → CLOSING → CLOSED
//! (see "Stream states" in `PROTOCOL.md` at the repository root).
//!
//! Pure bookkeeping: each peer drives one [`StreamLifecycle`] per stream with
//! the events it observes, and the lifecycle records every transition in order
//! so applications and tests can see the path a stream took.

use std::fmt;

/// The states a stream half passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    fn out_of_order_events_are_refused() {
        let mut s = StreamLifecycle::new();
        assert!(s.apply(StreamEvent::PortEstablished).is_err());
        assert!(s.apply(StreamEvent::Cleanup).is_err());
        s.apply(StreamEvent::Open).unwrap();
        assert!(s.apply(StreamEvent::Open).is_err());
        assert_eq!(s.state(), Opening);
    }
}
