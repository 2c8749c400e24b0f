//! The daemon's argument checking, on the real binary.

use std::process::Command;

#[test]
fn invalid_limits_are_refused_with_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusd"))
        .args(["--max-ring-size", "4096", "--ring-size", "8192"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("ring_size 8192 exceeds max_ring_size 4096"),
        "{err}"
    );
}

#[test]
fn version_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("shmbusd "));
}
