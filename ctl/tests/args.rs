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

#[test]
fn help_lists_every_exit_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for code in [
        "0 success",
        "1 error",
        "2 usage",
        "3 broker unreachable",
        "4 no such service",
        "5 stream error",
        "6 cancelled",
        "7 peer gone",
        "130 interrupted",
        "143 by SIGTERM",
        "141 standard output closed",
    ] {
        assert!(help.contains(code), "{code:?} missing from:\n{help}");
    }
}

#[test]
fn cat_help_warns_that_batch_holds_the_stream_in_memory() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusctl"))
        .args(["cat", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for what in [
        "in memory",
        "--max-batch <SIZE>",
        "[default: 256M]",
        "64M, 1G",
    ] {
        assert!(help.contains(what), "{what:?} missing from:\n{help}");
    }
}

#[test]
fn serve_help_says_what_can_be_served() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmbusctl"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("a directory or a socket is"), "{help}");
}
