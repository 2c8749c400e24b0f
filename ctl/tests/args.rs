//! The command line of `shmbusctl`, on the real binary.

use std::process::Command;

#[test]
fn help_lists_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "cat", "list", "--socket"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
}

#[test]
fn unknown_transport_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusctl"))
        .args(["cat", "x", "--transport", "carrier-pigeon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
