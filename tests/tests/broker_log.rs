//! What the broker says about itself at start.

use std::time::Duration;

use shmbus_tests::{wait_until, Broker};

#[test]
fn the_startup_line_names_the_socket_path_plainly() {
    let broker = Broker::start_logged_at("info", &[]);
    let mut line = String::new();
    wait_until(Duration::from_secs(10), || {
        match broker.log().lines().find(|l| l.contains("broker ready")) {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    });
    let expected = format!("socket={}", broker.socket.display());
    assert!(
        line.trim_end().ends_with(&expected),
        "expected {expected:?} in: {line}"
    );
    assert!(!line.contains("Some("), "{line}");
}
