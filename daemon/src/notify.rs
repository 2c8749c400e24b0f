//! The service manager's side channel (sd_notify): readiness, status,
//! reload and stop notices, and the watchdog. Every call is a no-op when the
//! broker does not run under a service manager (`NOTIFY_SOCKET` unset).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::warn;

/// How often `STATUS=` may change.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Talks to the service manager.
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_ping: Instant,
    last_status: Option<Instant>,
    status: String,
    pending: Option<String>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: Instant::now(),
            last_status: None,
            status: String::new(),
            pending: None,
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// `READY=1` with the current status.
    pub fn ready(&mut self, status: &str) {
        self.status = status.to_string();
        self.last_status = Some(Instant::now());
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic time the service manager expects.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Updates `STATUS=` when it changed, at most once per second; a change
    /// held back is sent by a later [`tick`](Self::tick).
    pub fn status(&mut self, status: String) {
        if !self.enabled || status == self.status {
            self.pending = None;
            return;
        }
        if self.last_status.is_some_and(|t| t.elapsed() < STATUS_EVERY) {
            self.pending = Some(status);
            return;
        }
        self.send(&[NotifyState::Status(&status)]);
        self.status = status;
        self.pending = None;
        self.last_status = Some(Instant::now());
    }

    /// Sends `WATCHDOG=1` when half the watchdog interval has passed, and a
    /// held-back status. Call from the event loop, so a stuck loop stops the pings.
    pub fn tick(&mut self) {
        if let Some(status) = self.pending.take() {
            self.status(status);
        }
        if let Some(interval) = self.watchdog {
            if self.last_ping.elapsed() >= interval / 2 {
                self.send(&[NotifyState::Watchdog]);
                self.last_ping = Instant::now();
            }
        }
    }

    /// How long the event loop may sleep before the next duty, if any.
    pub fn next_wakeup(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let status = self.pending.as_ref().map(|_| {
            let since = self.last_status.map_or(STATUS_EVERY, |t| t.elapsed());
            STATUS_EVERY.saturating_sub(since)
        });
        let ping = self
            .watchdog
            .map(|w| (w / 2).saturating_sub(self.last_ping.elapsed()));
        match (status, ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
