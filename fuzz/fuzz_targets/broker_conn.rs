//! The broker's connection handling driven directly: bytes and descriptors
//! go through the frame reader (`conn::FrameReader`), the frames it cuts go
//! to the router, whose port maker hands out inert descriptors. No socket,
//! no thread, no broker process: inputs run one after the other in this
//! process, each on a fresh router.
//!
//! The input is a series of operations, each an opcode byte (bits 7–5 the
//! kind, 4–2 an argument, 1–0 the connection) and the bytes it reads:
//!
//! | kind | operation |
//! |---|---|
//! | 0 | raw bytes: a length byte, then that many bytes, with `arg & 3` descriptors |
//! | 1 | `hello` (`arg` 0 asks for the wrong version, odd offers shared memory) |
//! | 2 | `register` service number `arg`; a byte picks the methods |
//! | 3 | `call` of service `arg`: id, method, mode, transport, ring size, credit (3 bytes) |
//! | 4 | `result` for broker call id (1 byte), `arg` picks the outcome |
//! | 5 | `cancel` of caller call id (1 byte) |
//! | 6 | `stream-progress` (3 bytes), `list`, `status` or `monitor`, by `arg` |
//! | 7 | the world: disconnect, port setup failing, the clock, drain, abort, descriptors held |
//!
//! Well-formed frames are encoded and cut by the reader like any bytes, so
//! the fuzzer reaches calls, streams and quotas without having to discover
//! the encoding, while raw bytes still probe the reader and decoder. Four
//! connections are open from the start (two of uid 1000, one of 1001, one
//! of root); one closed for a violation or by the input is replaced.
//!
//! The broker must never panic, whatever arrives; every frame it sends
//! carries the descriptors its kind says; and once every connection is
//! gone, no call, service or quota charge is left.
#![no_main]

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shmbus::credit::{CreditSpec, SizeStrategy};
use shmbus::frame::{
    self, CallRequest, Capabilities, ErrorCode, Frame, MethodSpec, RemoteError, StreamMode,
    TransportPreference, MAX_FDS_PER_FRAME, PROTOCOL_VERSION,
};
use shmbus::state::StreamState;
use shmbus::sys::PeerCredentials;
use shmbusd::config::Limits;
use shmbusd::conn::{FrameReader, Received};
use shmbusd::policy::{Policy, ServiceRule, Uids};
use shmbusd::quota::{Quota, Usage};
use shmbusd::router::testing::FakePorts;
use shmbusd::router::{ConnId, Output, Router};

const UIDS: [u32; 4] = [1000, 1000, 1001, 0];
const SERVICES: [&str; 8] = ["a", "b", "c", "sys.d", "sys.e", "f", "", "bad name"];
const METHODS: [(&str, StreamMode); 4] = [
    ("one", StreamMode::Unary),
    ("down", StreamMode::Download),
    ("up", StreamMode::Upload),
    ("both", StreamMode::Bidirectional),
];

/// Small limits, so that inputs reach them.
fn limits() -> Limits {
    let mut limits = Limits {
        max_services_per_connection: 3,
        max_methods_per_service: 4,
        max_calls_per_connection: 6,
        max_ring_size: 1 << 20,
        policy: Policy {
            rules: vec![ServiceRule {
                pattern: "sys.*".into(),
                register: Uids::Only(vec![0]),
                call: Uids::Any,
            }],
        },
        ..Limits::default()
    };
    limits.quotas.default = Quota {
        connections: 3,
        services: 4,
        streams: 4,
        ring_bytes: 3 << 20,
        fds_in_flight: 12,
    };
    limits
}

/// The input, read a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

struct Peer {
    id: ConnId,
    reader: FrameReader,
}

struct Harness {
    router: Router<FakePorts>,
    peers: [Option<Peer>; 4],
    next_id: ConnId,
    now: Instant,
    max_frame: u32,
    bait: OwnedFd,
    /// Descriptors output and not yet delivered, while `hold` is set.
    held: Vec<(ConnId, usize)>,
    hold: bool,
}

impl Harness {
    fn new() -> Harness {
        let now = Instant::now();
        let limits = limits();
        let mut h = Harness {
            max_frame: limits.max_frame,
            router: Router::new(limits, FakePorts::default(), now),
            peers: [None, None, None, None],
            next_id: 1,
            now,
            bait: shmbus::ring::create_memfd("bait", 4096, 1).unwrap(),
            held: Vec::new(),
            hold: false,
        };
        for slot in 0..4 {
            h.connect(slot);
        }
        h
    }

    fn connect(&mut self, slot: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let creds = PeerCredentials {
            pid: 100 + id as i32,
            uid: UIDS[slot],
            gid: UIDS[slot],
        };
        let ok = self.router.connect(id, creds, self.now).is_ok();
        self.peers[slot] = ok.then(|| Peer {
            id,
            reader: FrameReader::default(),
        });
    }

    /// Carries out what the router asked for, as the server would, and
    /// checks every frame's descriptors.
    fn apply(&mut self, outputs: Vec<Output>) {
        for out in outputs {
            match out {
                Output::Send { to, frame, fds } => {
                    assert_eq!(fds.len(), frame.fd_count(), "{frame:?}");
                    if fds.is_empty() {
                    } else if self.hold {
                        self.held.push((to, fds.len()));
                    } else {
                        self.router.fds_delivered(to, fds.len());
                    }
                }
                Output::Close { conn, .. } => self.close(conn),
            }
        }
    }

    /// Closes connection `id` and opens a fresh one in its slot.
    fn close(&mut self, id: ConnId) {
        let Some(slot) = self
            .peers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.id == id))
        else {
            return;
        };
        self.peers[slot] = None;
        let outputs = self.router.disconnect(id);
        self.apply(outputs);
        self.connect(slot);
    }

    /// Bytes and `fds` descriptors arriving on the connection in `slot`.
    fn arrive(&mut self, slot: usize, bytes: &[u8], fds: usize) {
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        let id = peer.id;
        for _ in 0..fds {
            let fd = self.bait.try_clone().expect("dup");
            peer.reader.fds_mut().push_back(fd);
        }
        let mut frames: Vec<Received> = Vec::new();
        // The receive itself refuses too many queued descriptors
        // (shmbus::sys::recv_with_fds).
        let ok = peer.reader.fds_mut().len() <= 2 * MAX_FDS_PER_FRAME
            && peer.reader.push(bytes, self.max_frame, &mut frames).is_ok();
        for (frame, fds) in frames {
            let outputs = self.router.handle(id, frame, fds, self.now);
            self.apply(outputs);
            if !self.peers.iter().flatten().any(|p| p.id == id) {
                return;
            }
        }
        if !ok {
            self.close(id);
        }
    }

    /// A well-formed frame from the connection in `slot`.
    fn send(&mut self, slot: usize, frame: &Frame) {
        let mut bytes = Vec::new();
        frame::encode(frame, &mut bytes);
        self.arrive(slot, &bytes, 0);
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.byte();
        let (kind, arg, slot) = (op >> 5, (op >> 2) & 7, (op & 3) as usize);
        match kind {
            0 => {
                let len = input.byte() as usize;
                let bytes = input.bytes(len).to_vec();
                self.arrive(slot, &bytes, (arg & 3) as usize);
            }
            1 => {
                let version = if arg == 0 { 1 } else { PROTOCOL_VERSION };
                let caps = Capabilities {
                    shared_memory: arg & 1 == 1,
                };
                self.send(slot, &Frame::Hello { version, caps });
            }
            2 => {
                let pick = input.byte();
                let mut methods: Vec<MethodSpec> = METHODS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| pick & (1 << i) != 0)
                    .map(|(_, &(name, mode))| MethodSpec::new(name, mode))
                    .collect();
                if pick & 0x10 != 0 {
                    methods.push(MethodSpec::new("one", StreamMode::Download));
                }
                let frame = Frame::Register {
                    request: (pick >> 5) as u64,
                    service: SERVICES[arg as usize].into(),
                    methods,
                };
                self.send(slot, &frame);
            }
            3 => {
                let call = input.byte() as u64;
                let how = input.byte();
                let sizes = input.byte();
                let deadline = input.byte();
                let method = if how & 3 == 3 && how & 4 != 0 {
                    "none"
                } else {
                    METHODS[(how & 3) as usize].0
                };
                let mode = match (how >> 3) & 7 {
                    0 => Some(StreamMode::Unary),
                    1 => Some(StreamMode::Download),
                    2 => Some(StreamMode::Upload),
                    3 => Some(StreamMode::Bidirectional),
                    _ => None,
                };
                let transport = match how >> 6 {
                    0 => TransportPreference::SharedMemory,
                    1 => TransportPreference::Socket,
                    _ => TransportPreference::Auto,
                };
                let ring_size = match sizes & 7 {
                    0 => None,
                    1 => Some(3000),
                    n => Some(1u32 << (10 + n)),
                };
                let strategy = match (sizes >> 3) & 3 {
                    0 => SizeStrategy::Items,
                    1 => SizeStrategy::Bytes,
                    _ => SizeStrategy::Custom,
                };
                let high_water_mark = match sizes >> 5 {
                    0 => 0,
                    1 => u64::MAX,
                    n => 1 << (n * 8),
                };
                let req = CallRequest {
                    call,
                    service: SERVICES[arg as usize].into(),
                    method: method.into(),
                    args: vec![how; (sizes & 3) as usize],
                    mode,
                    credit: CreditSpec {
                        high_water_mark,
                        strategy,
                    },
                    transport,
                    ring_size,
                    // None, already past, or a few milliseconds.
                    time_left_us: match deadline & 3 {
                        0 | 1 => None,
                        2 => Some(0),
                        _ => Some(u64::from(deadline) * 100),
                    },
                };
                self.send(slot, &Frame::Call(req));
            }
            4 => {
                let call = input.byte() as u64;
                let outcome = match arg {
                    0..=3 => Ok(vec![arg; arg as usize]),
                    4 => Err(RemoteError {
                        code: ErrorCode::Aborted,
                        message: "cancelled".into(),
                    }),
                    5 => Err(RemoteError {
                        code: ErrorCode::ShuttingDown,
                        message: "stopping".into(),
                    }),
                    _ => Err(RemoteError {
                        code: ErrorCode::Failed,
                        message: "failed".into(),
                    }),
                };
                self.send(slot, &Frame::Result { call, outcome });
            }
            5 => {
                let call = input.byte() as u64;
                self.send(slot, &Frame::Cancel { call });
            }
            6 => {
                let request = arg as u64;
                let frame = match arg {
                    0 | 4 => {
                        let [stream, state, bytes] = [input.byte(), input.byte(), input.byte()];
                        let state = match state % 5 {
                            0 => StreamState::Idle,
                            1 => StreamState::Opening,
                            2 => StreamState::Active,
                            3 => StreamState::Closing,
                            _ => StreamState::Closed,
                        };
                        Frame::StreamProgress {
                            stream: stream as u64,
                            state,
                            bytes: (bytes as u64) << (bytes % 64),
                            credit_outstanding: bytes as u64,
                        }
                    }
                    1 => Frame::List { request },
                    2 => Frame::Status { request },
                    3 => Frame::Monitor { request },
                    _ => Frame::Unregister {
                        service: SERVICES[input.byte() as usize % SERVICES.len()].into(),
                    },
                };
                self.send(slot, &frame);
            }
            _ => match arg {
                0 | 1 => {
                    if let Some(peer) = &self.peers[slot] {
                        let id = peer.id;
                        self.close(id);
                    }
                }
                2 => {
                    let ports = self.router.ports_mut();
                    ports.shm_fails = match ports.shm_fails {
                        Some(_) => None,
                        None => Some("no memfd".into()),
                    };
                }
                3 => self.router.ports_mut().socket_fails ^= true,
                4 => self.now += Duration::from_millis(100 * input.byte() as u64),
                5 => self.router.drain(),
                6 => {
                    let outputs = self.router.abort_all("stopped");
                    self.apply(outputs);
                }
                _ => {
                    self.hold ^= true;
                    for (to, n) in std::mem::take(&mut self.held) {
                        self.router.fds_delivered(to, n);
                    }
                }
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    let mut input = Input(data);
    while !input.0.is_empty() {
        h.step(&mut input);
    }
    // Everyone leaves: nothing may be left behind.
    for slot in 0..4 {
        if let Some(peer) = h.peers[slot].take() {
            let outputs = h.router.disconnect(peer.id);
            h.apply(outputs);
        }
    }
    assert_eq!(h.router.live_calls(), 0);
    assert_eq!(h.router.services(), 0);
    assert_eq!(h.router.connections(), 0);
    for uid in UIDS {
        assert_eq!(h.router.usage(uid), Usage::default(), "uid {uid}");
    }
});
