//! How the workspace is cut into packages: a program linking the client
//! library builds none of the command's dependencies.

use std::process::Command;

/// The normal (non-dev, non-build) dependency tree of a package, one crate a line.
fn normal_tree(package: &str) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 tree")
}

fn crates(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn the_client_library_does_not_build_the_commands_dependencies() {
    let tree = normal_tree("shmbus-client");
    let crates = crates(&tree);
    assert!(crates.contains(&"shmbus"), "unexpected tree:\n{tree}");
    for heavy in ["clap", "serde_json"] {
        assert!(
            !crates.contains(&heavy),
            "shmbus-client pulls in {heavy}:\n{tree}"
        );
    }
}

#[test]
fn shmbusctl_is_its_own_package_on_top_of_the_client() {
    let tree = normal_tree("shmbusctl");
    let crates = crates(&tree);
    for dep in ["shmbus-client", "clap", "serde_json"] {
        assert!(crates.contains(&dep), "{dep} missing from:\n{tree}");
    }
}
