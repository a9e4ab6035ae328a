//! `tollgate check` and `tollgate run` on bad configs: every problem, with its path, before
//! anything is bound.

mod common;

use common::BIN;
use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_accepts_the_shipped_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/gateway.yaml");
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": ok (3 routes, 2 upstreams, 4 backends"),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_problem_with_its_path() {
    let (code, stdout, stderr) = check(
        r#"
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9000" }], connect_timeout: fast, retry: 2 }
routes:
  - { name: a, path: /a, upstream: billing }
  - { name: a, path: /b, upstream: echo, colour: blue }
  - { name: c, path: /a, upstream: echo }
"#,
    );
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    for expected in [
        "upstreams.echo.retry: unknown field `retry`",
        "routes[0].upstream: unknown upstream \"billing\"",
        "routes[1].colour: unknown field `colour`",
        "routes[2]: duplicate route: routes[0] already matches the same host, path and methods",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "routes: []\nlisten: { http: \"127.0.0.1:1\" }\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes: at least one route is required"),
        "{stderr}"
    );
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
