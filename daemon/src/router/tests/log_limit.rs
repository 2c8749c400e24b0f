//! The log limiter, on the clock given.

use super::*;

/// Collects the lines logged (at warning level and above) while `f` runs.
fn warnings(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink(Arc::default());
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn refusals_are_logged_a_few_per_uid_per_window_with_the_count_held_back() {
    let mut bus = Bus::default();
    let owner = bus.connect(UID);
    let stranger = bus.connect(UID + 1);
    let neighbour = bus.connect(UID + 2);
    bus.serve(owner, "mine", &[("one", Unary)]);
    let lines = warnings(|| {
        for id in 0..BURST as u64 + 3 {
            bus.advance(Duration::from_secs(1));
            bus.call(stranger, request(id, "mine", "one"));
        }
        // Another uid has its own budget.
        bus.call(neighbour, request(1, "mine", "one"));
        // A window after the first warning, the next one says how many
        // were held back.
        bus.advance(WINDOW);
        bus.call(stranger, request(99, "mine", "one"));
        bus.call(stranger, request(100, "mine", "one"));
    });
    let from = |uid: u32| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("uid={uid}")))
            .collect::<Vec<_>>()
    };
    let stranger_lines = from(UID + 1);
    assert_eq!(stranger_lines.len(), BURST as usize + 2, "{lines:#?}");
    assert!(stranger_lines.iter().all(|l| l.contains("call denied")));
    assert!(stranger_lines[..BURST as usize]
        .iter()
        .all(|l| !l.contains("not logged")));
    assert!(
        stranger_lines[BURST as usize].contains("(3 earlier warnings for this uid not logged)"),
        "{}",
        stranger_lines[BURST as usize]
    );
    assert!(!stranger_lines[BURST as usize + 1].contains("not logged"));
    assert_eq!(from(UID + 2).len(), 1);
}

#[test]
fn a_window_is_measured_on_the_clock_given_not_the_wall_clock() {
    let (mut bus, caller, _) = bus_with(quota(|q| q.streams = 0));
    let lines = warnings(|| {
        for id in 0..BURST as u64 * 3 {
            bus.call(caller, request(id, "svc", "down"));
        }
    });
    assert_eq!(lines.len(), BURST as usize, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("stream refused")));
    let lines = warnings(|| {
        bus.advance(WINDOW - Duration::from_millis(1));
        bus.call(caller, request(0, "svc", "down"));
        bus.advance(Duration::from_millis(1));
        bus.call(caller, request(0, "svc", "down"));
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("(11 earlier warnings for this uid not logged)"));
}

#[test]
fn connections_refused_at_the_quota_are_logged_through_the_limiter() {
    let mut bus = Bus::new(quota(|q| q.connections = 1));
    bus.connect(UID);
    let lines = warnings(|| {
        for _ in 0..20 {
            assert!(bus.try_connect(UID).is_err());
        }
    });
    assert_eq!(lines.len(), BURST as usize);
    assert!(lines[0].contains("connection refused: uid 1000 is at its quota of 1 connections"));
}

#[test]
fn refused_registrations_are_logged() {
    let limits = Limits {
        policy: Policy {
            rules: vec![ServiceRule {
                pattern: "sys.*".into(),
                register: Uids::Only(vec![0]),
                call: Uids::Any,
            }],
        },
        ..quota(|q| q.services = 1)
    };
    let mut bus = Bus::new(limits);
    let a = bus.connect(UID);
    bus.serve(a, "first", &[]);
    let lines = warnings(|| {
        bus.register(a, 1, "sys.x", &[]);
        bus.register(a, 2, "second", &[]);
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("registration denied"));
    assert!(lines[1].contains("registration refused: uid 1000 is at its quota of 1 services"));
}
