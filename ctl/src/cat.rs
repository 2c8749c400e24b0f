//! `shmbusctl cat`: call a service and write its stream to standard output.
//!
//! The call runs on a worker thread while the main thread waits for it or
//! for SIGINT or SIGTERM. A signal cancels the call, so the service sees it
//! cancelled and the broker ends the stream, and cat exits 128 + the signal.
//! A closed standard output (EPIPE) cancels the call too, and cat exits 141
//! without a message, as a command stopped by SIGPIPE would. `--batch`
//! holds the whole stream in memory, up to `--max-batch` bytes: past that
//! the call is cancelled and cat fails.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use shmbus_client::{
    Call, Connection, CreditSpec, Error, Receiver, StreamMode, TransportPreference,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::progress::Progress;
use crate::size::human;
use crate::{Failure, METHOD, SIZE_METHOD};

/// What `cat` was asked to do.
pub struct Options {
    /// How to carry the stream.
    pub transport: TransportPreference,
    /// Collect the whole stream before writing it, holding at most this many bytes.
    pub batch: Option<u64>,
    /// Bytes and rate on stderr.
    pub progress: bool,
    /// The call's deadline, from when cat starts.
    pub timeout: Option<Duration>,
}

/// How long cat waits, once it cancelled its call, for the service's answer.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// What the main thread hears about.
enum Event {
    Signal(i32),
    /// The worker cancelled the call, and cat fails this way once the
    /// service answered (or [`CANCEL_GRACE`] passed).
    Cancelling(Failure),
    /// The worker is done.
    Done(Result<(), Failure>),
}

/// The call in flight, shared so that a signal can cancel it.
#[derive(Default)]
struct Slot {
    call: Option<Call>,
    interrupted: bool,
}

type Shared = Arc<Mutex<Slot>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Slot> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How copying the stream out stopped early.
enum Stop {
    /// The stream itself failed.
    Stream(Error),
    /// cat gives up on the stream: the call is cancelled, then cat fails so.
    Cancel(Failure),
}

/// `shmbusctl cat NAME`.
pub fn cat(socket: &Path, name: &str, opts: Options) -> Result<(), Failure> {
    let deadline = opts.timeout.and_then(|t| Instant::now().checked_add(t));
    let conn = Connection::connect(socket)?;
    let (tx, events) = mpsc::channel();
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Failure::Other(format!("cannot handle signals: {e}")))?;
    let signal_tx = tx.clone();
    thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    let shared = Shared::default();
    let worker = shared.clone();
    let name = name.to_string();
    thread::spawn(move || {
        let r = run(&conn, &name, &opts, deadline, &worker, &tx);
        let _ = tx.send(Event::Done(r));
    });
    match events.recv() {
        Ok(Event::Done(r)) => r,
        Ok(Event::Signal(sig)) => {
            {
                let mut slot = lock(&shared);
                slot.interrupted = true;
                if let Some(call) = slot.call.as_mut() {
                    let _ = call.cancel();
                }
            }
            let _ = wait_done(&events);
            Err(Failure::Interrupted(sig))
        }
        Ok(Event::Cancelling(f)) => match wait_done(&events) {
            Some(sig) => Err(Failure::Interrupted(sig)),
            None => Err(f),
        },
        Err(_) => Err(Failure::Other("the call ended without a result".into())),
    }
}

/// Waits for the worker to finish, at most [`CANCEL_GRACE`]; the signal
/// that cut the wait short, if one did.
fn wait_done(events: &mpsc::Receiver<Event>) -> Option<i32> {
    let deadline = Instant::now() + CANCEL_GRACE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Signal(sig)) => return Some(sig),
            Ok(Event::Cancelling(_)) => {}
            Ok(Event::Done(_)) | Err(_) => return None,
        }
    }
}

/// The worker: makes the call and copies its stream to standard output.
fn run(
    conn: &Connection,
    name: &str,
    opts: &Options,
    deadline: Option<Instant>,
    shared: &Shared,
    events: &mpsc::Sender<Event>,
) -> Result<(), Failure> {
    let mut meter = opts.progress.then(|| {
        let size = conn
            .call(name, SIZE_METHOD)
            .unary()
            .ok()
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes));
        Progress::new(size)
    });
    let mut builder = conn
        .call(name, METHOD)
        .mode(StreamMode::Download)
        .transport(opts.transport)
        // Items credit: a blob costs one item whatever its size, so a
        // service may hand over a file whole (`serve --blob`); the ring's
        // size bounds the bytes in flight.
        .credit(CreditSpec::items(32));
    if let Some(d) = deadline {
        builder = builder.deadline(d);
    }
    let mut call = builder.start()?;
    let mut rx = call
        .take_receiver()
        .ok_or_else(|| Error::Protocol("download call without a receiving half".into()))?;
    {
        let mut slot = lock(shared);
        if slot.interrupted {
            // The signal came while the call was being set up.
            let _ = call.cancel();
        }
        slot.call = Some(call);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let copied = match opts.batch {
        None => stream(&mut rx, &mut out, meter.as_mut()),
        Some(max) => batch(&mut rx, &mut out, max, meter.as_mut()),
    };
    match copied {
        Ok(()) => {}
        Err(Stop::Stream(e)) => {
            if lock(shared).interrupted {
                // Cancelled on a signal: let the service's answer reach the
                // broker while the main thread waits.
                finish_quietly(shared);
            }
            return Err(e.into());
        }
        Err(Stop::Cancel(why)) => {
            // The broker hears first, then the service on the stream's
            // port (which also wakes it if it waits for credit).
            if let Some(call) = lock(shared).call.as_mut() {
                let _ = call.cancel();
            }
            rx.cancel();
            let _ = events.send(Event::Cancelling(why));
            finish_quietly(shared);
            return Ok(());
        }
    }
    let call = lock(shared).call.take();
    if let Some(call) = call {
        call.finish()?;
    }
    if let Some(m) = meter.as_mut() {
        m.done();
    }
    Ok(())
}

/// Waits for the result of a cancelled call, whatever it is.
fn finish_quietly(shared: &Shared) {
    let call = lock(shared).call.take();
    if let Some(call) = call {
        let _ = call.finish();
    }
}

/// Why writing standard output failed, as a reason to cancel the call.
fn stdout_failed(e: io::Error) -> Stop {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Stop::Cancel(Failure::StdoutClosed)
    } else {
        Stop::Cancel(Failure::Other(format!(
            "writing standard output failed: {e}"
        )))
    }
}

/// Copies the stream to `out` as it arrives; a blob is written straight
/// from its sealed mapping.
fn stream(
    rx: &mut Receiver,
    out: &mut impl Write,
    mut meter: Option<&mut Progress>,
) -> Result<(), Stop> {
    loop {
        let buf = rx.fill_buf().map_err(|e| Stop::Stream(Error::from(e)))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        out.write_all(buf).map_err(stdout_failed)?;
        rx.consume(n);
        if let Some(m) = meter.as_mut() {
            m.add(n);
        }
    }
    out.flush().map_err(stdout_failed)
}

/// Collects the whole stream, at most `max` bytes, then writes it to `out`.
fn batch(
    rx: &mut Receiver,
    out: &mut impl Write,
    max: u64,
    mut meter: Option<&mut Progress>,
) -> Result<(), Stop> {
    let mut items = Vec::new();
    let mut total = 0u64;
    while let Some(item) = rx.recv_bytes().map_err(Stop::Stream)? {
        total += item.len() as u64;
        if total > max {
            return Err(Stop::Cancel(too_large(max)));
        }
        items.push(item);
    }
    for item in &items {
        out.write_all(item).map_err(stdout_failed)?;
        if let Some(m) = meter.as_mut() {
            m.add(item.len());
        }
    }
    out.flush().map_err(stdout_failed)
}

fn too_large(max: u64) -> Failure {
    Failure::Other(format!(
        "the stream is larger than --max-batch {} ({max} bytes), so it was cancelled; \
         raise --max-batch, or drop --batch to stream it",
        human(max as f64)
    ))
}
