//! `tollgate check` and `tollgate run` on bad configs: every problem, with its path, before
//! anything is bound; `tollgate token verify` reading its token from standard input.

use crate::common::{jwks, tollgate_check as check, TestKey, BIN};
use std::io::Write;
use std::process::{Command, Stdio};

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
    // Both listeners' ports are held here: had `run` tried to bind either before refusing the
    // config, it would have failed on the address instead, and said so.
    let proxy = crate::common::listen_on_free_port();
    let metrics = crate::common::listen_on_free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "routes: []\nlisten: {{ http: \"{}\" }}\nmetrics: {{ listen: \"{}\" }}\n",
            proxy.local_addr().unwrap(),
            metrics.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A gateway that bound first would retry the held ports instead of exiting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("run did not refuse the config at once");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("routes: at least one route is required"),
        "{stderr}"
    );
    let lower = stderr.to_ascii_lowercase();
    assert!(
        !lower.contains("in use") && !lower.contains("bind"),
        "it tried to bind: {stderr}"
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

/// `tollgate token verify --jwks FILE [extra] TOKEN`; with `stdin`, TOKEN is `-` and `stdin` is
/// written to the process (from a thread: a big token would fill the pipe before the
/// process reads it). Returns the exit code and stdout.
fn verify(
    jwks_file: &std::path::Path,
    extra: &[&str],
    token: &str,
    stdin: Option<&str>,
) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["token", "verify", "--jwks", jwks_file.to_str().unwrap()])
        .args(extra)
        .arg(if stdin.is_some() { "-" } else { token })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.unwrap_or("").to_owned();
    let writer = std::thread::spawn(move || {
        // The process may stop reading once it has enough; a broken pipe is not a failure.
        let _ = pipe.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn token_verify_reads_the_token_from_stdin_with_the_same_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let key = TestKey::es256("k1");
    std::fs::write(&path, jwks(&[&key])).unwrap();
    let token = key.sign(serde_json::json!({ "sub": "alice", "aud": "api" }));

    let by_arg = verify(&path, &[], &token, None);
    assert_eq!(by_arg.0, 0, "{}", by_arg.1);
    assert!(by_arg.1.contains(r#""valid":true"#), "{}", by_arg.1);
    // Trailing newline and whitespace (as `echo` or a file gives them) are removed.
    assert_eq!(verify(&path, &[], "", Some(&format!("{token}\n"))), by_arg);
    assert_eq!(
        verify(&path, &[], "", Some(&format!("{token} \r\n\t"))),
        by_arg
    );

    // A refusal is the same refusal either way.
    let wrong_aud = ["--audience", "other"];
    let refused = verify(&path, &wrong_aud, &token, None);
    assert_eq!(refused.0, 1);
    assert!(
        refused.1.contains(r#""reason":"audience""#),
        "{}",
        refused.1
    );
    assert_eq!(verify(&path, &wrong_aud, "", Some(&token)), refused);
}

#[test]
fn token_verify_reads_a_token_too_large_for_a_command_line_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let key = TestKey::es256("k1");
    std::fs::write(&path, jwks(&[&key])).unwrap();
    // 200 KB of claims: above Linux's 128 KiB limit on one argument, and above the
    // verifier's 64 KiB, which must answer rather than a failed read or a truncated token.
    let token = key.sign(serde_json::json!({ "sub": "alice", "pad": "x".repeat(200 * 1024) }));
    assert!(token.len() > 200 * 1024);
    let (code, stdout) = verify(&path, &[], "", Some(&format!("{token}\n")));
    assert_eq!(code, 1, "{stdout}");
    let verdict: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verdict["valid"], false);
    assert_eq!(verdict["reason"], "too_large");
}

#[test]
fn probe_exits_zero_only_on_a_2xx_answer() {
    let echo = crate::common::Echo::start("E");
    let gw = crate::common::Gateway::start(&format!(
        "upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: all, path: /, upstream: e }}\n",
        echo.addr()
    ));
    let probe = |url: &str| {
        Command::new(BIN)
            .args(["probe", url, "--timeout", "2s"])
            .output()
            .unwrap()
    };
    let healthy = probe(&format!("http://127.0.0.1:{}/healthz", gw.metrics_port));
    assert!(healthy.status.success(), "{healthy:?}");
    let missing = probe(&format!("http://127.0.0.1:{}/nope", gw.metrics_port));
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    let closed = probe(&format!(
        "http://127.0.0.1:{}/healthz",
        crate::common::free_port()
    ));
    assert_eq!(closed.status.code(), Some(1));
    let https = probe("https://127.0.0.1:1/healthz");
    assert_eq!(https.status.code(), Some(1));
}

#[test]
fn check_refuses_a_deny_list_with_bad_lines_or_two_sources() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.jsonl");
    std::fs::write(
        &list,
        "{\"jti\": \"ok\"}\n{\"sub\": \"no-time\"}\nnot json\n",
    )
    .unwrap();
    let config = |revocation: &str| {
        format!(
            r#"
auth:
  providers:
    - {{ name: p, issuer: "https://i", audiences: any, jwks: {{ keys: [] }} }}
  revocation: {revocation}
upstreams:
  echo: {{ backends: [{{ addr: "127.0.0.1:9000" }}] }}
routes:
  - {{ name: a, path: /a, upstream: echo }}
"#
        )
    };
    let (code, _, stderr) = check(&config(&format!("{{ file: \"{}\" }}", list.display())));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("auth.revocation.file: line 2: a sub entry needs revoked_before")
            && stderr.contains("line 3: not a JSON object"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&config(&format!(
        "{{ file: \"{}\", redis: {{ url: \"redis://127.0.0.1:1\" }}, poll: 0s }}",
        list.display()
    )));
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "auth.revocation: give file or redis, not both",
        "auth.revocation.poll: must be greater than zero",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let (code, _, stderr) = check(&config("{ file: /nonexistent/revoked.jsonl }"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("auth.revocation.file: cannot read /nonexistent/revoked.jsonl"),
        "{stderr}"
    );
}

#[test]
fn token_revoke_refuses_what_the_list_would_not_accept() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.jsonl");
    let revoke = |args: &[&str]| {
        Command::new(BIN)
            .args(["token", "revoke"])
            .args(args)
            .args(["--file", list.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = revoke(&["--jti", "a", "--before", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let out = revoke(&["--sub", "a", "--before", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    assert!(!list.exists(), "nothing is written for a refused entry");
    // Appended on a line of its own, even after a file without a final newline.
    std::fs::write(&list, "{\"jti\":\"x\"}").unwrap();
    let out = revoke(&[
        "--sub",
        "a",
        "--before",
        "2026-01-01T00:00:00Z",
        "--iss",
        "https://i",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&list).unwrap(),
        "{\"jti\":\"x\"}\n{\"sub\":\"a\",\"revoked_before\":1767225600,\"iss\":\"https://i\"}\n"
    );
    // Behind a bad line the entry would not take effect (gateways keep their last good
    // list): appended, but the command fails and says why.
    std::fs::write(&list, "{\"jti\":\"typo\",}\n").unwrap();
    let out = revoke(&["--jti", "v1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has bad lines (line 1:"), "{stderr}");
    // No password in what it prints.
    let out = Command::new(BIN)
        .args([
            "token",
            "revoke",
            "--jti",
            "a",
            "--redis",
            "redis://:hunter2@127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redis://:***@127.0.0.1:1") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}
