//! The built `layoutctl` binary against a real endpoint: the upgrade flow, every
//! command, every exit code.

use std::fs;
use std::net::{SocketAddr, TcpListener};

use layout_core::StartIntent;

use crate::support::{
    assert_exit, cutting_proxy, json, layoutctl, path_str, stderr, stdout, Fixture, Start, TOKEN,
};

#[test]
fn prepare_restart_with_the_new_release_finalize_watch_and_status() {
    // The old release: SLV 1, finalized.
    let fx = Fixture::start_with(&Start {
        software_layout_version: Some(1),
        ..Start::default()
    });
    for _ in 0..3 {
        fx.node.put(&fx.prepare).unwrap();
    }
    let out = fx.layoutctl(&["status"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("MLV            1 (BucketLayoutSupport)"),
        "{}",
        stdout(&out)
    );

    // 1. Prepare.
    let out = fx.layoutctl(&["prepare", "--json"]);
    assert_exit(&out, 0);
    let prepared = json(&out);
    assert_eq!(prepared["state"], "PREPARE_COMPLETED");
    assert_eq!(prepared["index"], 3);
    assert!(fx.node.put(&fx.prepare).is_err(), "writes are gated");

    // 2. Swap binaries: the new release (SLV 3) starts with the Upgrade intent, which
    //    cancels prepare locally.
    let fx = fx.restart(&Start {
        software_layout_version: None,
        intent: StartIntent::Upgrade,
        ..Start::default()
    });

    // 3. Verify it runs pre-finalized.
    let out = fx.layoutctl(&["status", "--json"]);
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["metadata_layout_version"], 1);
    assert_eq!(status["software_layout_version"], 3);
    assert_eq!(status["needs_finalization"], true);
    assert_eq!(status["prepare"]["state"], "NOT_PREPARED");
    assert_eq!(status["finalization"]["status"], "FINALIZATION_REQUIRED");
    let out = fx.layoutctl(&["features"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("MultiTenancy"), "{}", stdout(&out));

    // 4. Finalize and watch it to the end.
    let out = fx.layoutctl(&["finalize", "--watch", "--client-id", "ops@host"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("Finalization is done."), "{text}");
    assert!(text.contains("SnapshotDiff migrated"), "{text}");
    assert!(text.contains("FINALIZATION_DONE"), "{text}");

    // 5. Status: finalized.
    let out = fx.layoutctl(&["status", "--json"]);
    assert_exit(&out, 0);
    let status = json(&out);
    assert_eq!(status["metadata_layout_version"], 3);
    assert_eq!(status["needs_finalization"], false);
    let out = fx.layoutctl(&["finalization-status", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["client_id"], "ops@host");
}

#[test]
fn finalize_watch_in_json_reports_the_messages_and_the_outcome() {
    let fx = Fixture::start();
    fx.node.hold.arm();
    let out = fx.layoutctl(&[
        "finalize",
        "--to",
        "MultiTenancy",
        "--json",
        "--client-id",
        "c1",
    ]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["outcome"], "started");
    fx.node.hold.release();
    let out = fx.layoutctl(&[
        "finalize",
        "--to",
        "SnapshotDiff",
        "--watch",
        "--json",
        "--client-id",
        "c1",
    ]);
    // The first run may still be going: then this one is refused (exit 1); either way
    // the watch of a finished run reports JSON.
    if out.status.code() == Some(0) {
        let watched = json(&out);
        assert_eq!(watched["ok"], true);
        assert_eq!(watched["finalization"]["metadata_layout_version"], 3);
        assert!(watched["finalization"]["messages"].as_array().is_some());
    } else {
        assert_exit(&out, 1);
        assert_eq!(json(&out)["code"], "finalization-in-progress");
    }
    let _ = fx.service.join_finalization();
}

#[test]
fn dry_run_overrides_and_cancel_prepare() {
    let fx = Fixture::start();
    fx.node
        .open_containers
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let out = fx.layoutctl(&["finalize", "--dry-run"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("would finalize from layout version 1 to 3"),
        "{text}"
    );
    assert!(
        text.contains("condition no-open-containers: FAILS: 1 containers are open"),
        "{text}"
    );
    let out = fx.layoutctl(&["finalize", "--dry-run", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["plan"]["steps"].as_array().unwrap().len(), 2);

    // Refused by the condition: exit 1.
    let out = fx.layoutctl(&["finalize"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("conditions-failed"),
        "{}",
        stderr(&out)
    );
    // Overridden with a reason: done.
    let out = fx.layoutctl(&[
        "finalize",
        "--override",
        "no-open-containers",
        "--reason",
        "container 17 is abandoned",
        "--watch",
    ]);
    assert_exit(&out, 0);
    let version = fs::read_to_string(fx.version_path()).unwrap();
    assert!(version.contains("container 17 is abandoned"), "{version}");

    let out = fx.layoutctl(&["prepare"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("prepared at log index 0"),
        "{}",
        stdout(&out)
    );
    let out = fx.layoutctl(&["cancel-prepare", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["state"], "NOT_PREPARED");
    let out = fx.layoutctl(&["cancel-prepare"]);
    assert_exit(&out, 0);
}

#[test]
fn exit_code_1_when_the_operation_is_refused() {
    let fx = Fixture::start();
    assert_exit(&fx.layoutctl(&["prepare"]), 0);
    let out = fx.layoutctl(&["finalize", "--json"]);
    assert_exit(&out, 1);
    let failure = json(&out);
    assert_eq!(failure["code"], "prepared");
    assert_eq!(failure["http_status"], 409);
    assert_eq!(failure["exit_code"], 1);
}

#[test]
fn exit_code_2_for_usage_errors() {
    let fx = Fixture::start();
    // Bad command lines.
    assert_exit(&layoutctl(&["frobnicate"], &[]), 2);
    assert_exit(&layoutctl::<&str>(&[], &[]), 2);
    let out = fx.layoutctl(&["finalize", "--override", "no-open-containers"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    assert_exit(&fx.layoutctl(&["finalize", "--dry-run", "--watch"]), 2);
    assert_exit(
        &layoutctl(
            &[
                "--endpoint",
                "https://127.0.0.1:1",
                "--token",
                TOKEN,
                "status",
            ],
            &[],
        ),
        2,
    );
    // Malformed endpoints and timeouts are usage errors, never a connection attempt.
    for endpoint in [
        "http://",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "ftp://127.0.0.1:1",
        "127.0.0.1",
    ] {
        let out = layoutctl(&["--endpoint", endpoint, "--token", TOKEN, "status"], &[]);
        assert_exit(&out, 2);
    }
    for timeout in ["0", "9223372036854775807", "-1", "soon"] {
        let out = fx.layoutctl(&["--timeout", timeout, "status"]);
        assert_exit(&out, 2);
    }
    // A request the endpoint rejects as invalid.
    let out = fx.layoutctl(&["finalize", "--to", "Teleportation"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown layout feature"),
        "{}",
        stderr(&out)
    );
    // Help and version are not errors.
    assert_exit(&layoutctl(&["--help"], &[]), 0);
    assert_exit(&layoutctl(&["--version"], &[]), 0);
}

#[test]
fn verbose_logs_each_request_to_stderr_and_quiet_logs_nothing() {
    let fx = Fixture::start();
    let quiet = fx.layoutctl(&["status", "--json"]);
    assert_exit(&quiet, 0);
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
    let verbose = fx.layoutctl(&["-v", "status", "--json"]);
    assert_exit(&verbose, 0);
    let log = stderr(&verbose);
    assert!(
        log.contains("admin request answered") && log.contains("/v1/status") && log.contains("200"),
        "{log}"
    );
    // stdout stays one JSON document.
    json(&verbose);
}

#[test]
fn exit_code_3_for_connection_and_authentication_failures() {
    let fx = Fixture::start();
    // Wrong token.
    let out = layoutctl(
        &[
            "--endpoint",
            &fx.url(),
            "--token",
            &"w".repeat(TOKEN.len()),
            "status",
        ],
        &[],
    );
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
    // No token anywhere.
    let out = layoutctl(&["--endpoint", &fx.url(), "status"], &[]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("no admin token"), "{}", stderr(&out));
    // A missing token file.
    assert_exit(
        &layoutctl(
            &[
                "--endpoint",
                &fx.url(),
                "--token-file",
                "/nonexistent/token",
                "status",
            ],
            &[],
        ),
        3,
    );
    // Nothing listening: a port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = layoutctl(
        &[
            "--endpoint",
            &format!("127.0.0.1:{port}"),
            "--token",
            TOKEN,
            "status",
            "--json",
        ],
        &[],
    );
    assert_exit(&out, 3);
    assert_eq!(json(&out)["exit_code"], 3);
}

#[test]
fn the_token_comes_from_a_flag_the_environment_or_a_file() {
    let fx = Fixture::start();
    let url = fx.url();
    assert_exit(
        &layoutctl(&["--endpoint", &url, "--token", TOKEN, "status"], &[]),
        0,
    );
    assert_exit(
        &layoutctl(
            &["--endpoint", &url, "status"],
            &[("LAYOUTCTL_TOKEN", TOKEN)],
        ),
        0,
    );
    let file = path_str(&fx.token_file());
    assert_exit(
        &layoutctl(
            &["--endpoint", &url, "status"],
            &[("LAYOUTCTL_TOKEN_FILE", &file)],
        ),
        0,
    );
    assert_exit(
        &layoutctl(
            &["status"],
            &[("LAYOUTCTL_ENDPOINT", &url), ("LAYOUTCTL_TOKEN", TOKEN)],
        ),
        0,
    );
    // The flag wins over the environment.
    assert_exit(
        &layoutctl(
            &["--endpoint", &url, "--token", TOKEN, "status"],
            &[("LAYOUTCTL_TOKEN", "wrong-token-wrong-token")],
        ),
        0,
    );
}

#[test]
fn inspect_explains_a_healthy_file() {
    let fx = Fixture::start();
    assert_exit(&fx.layoutctl(&["prepare"]), 0);
    let dir = fx.version_path().parent().unwrap().to_owned();
    let out = layoutctl(&["inspect", "--dir", &path_str(&dir)], &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("OK: intact, checksum matches"), "{text}");
    assert!(text.contains("metadata layout version (MLV)"), "{text}");
    assert!(text.contains("PREPARED at log index 0"), "{text}");
    let out = layoutctl(
        &["inspect", "--dir", &path_str(&fx.version_path()), "--json"],
        &[],
    );
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["state"]["metadata_layout_version"], 1);
    assert_eq!(report["state"]["prepare_index"], 0);
}

#[test]
fn inspect_shows_what_is_wrong_and_where_exit_code_4() {
    let fx = Fixture::start();
    let path = fx.version_path();
    let original = fs::read_to_string(&path).unwrap();
    let line = original
        .lines()
        .position(|l| l.starts_with("layout.version="))
        .unwrap()
        + 1;
    fs::write(
        &path,
        original.replace("layout.version=1", "layout.version=3"),
    )
    .unwrap();
    let out = layoutctl(
        &["inspect", "--dir", &path_str(path.parent().unwrap())],
        &[],
    );
    assert_exit(&out, 4);
    let text = stdout(&out);
    assert!(text.contains("DAMAGED at line"), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains("(MISMATCH)"), "{text}");

    // A malformed line (under a valid checksum: a careful hand edit) is pinned to its
    // number.
    let body: String = original
        .lines()
        .filter(|l| !l.starts_with("checksum="))
        .map(|l| {
            if l.starts_with("layout.version=") {
                "layout.version 1\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let broken = format!(
        "{body}checksum=crc32:{:08x}\n",
        crc32fast::hash(body.as_bytes())
    );
    fs::write(&path, broken).unwrap();
    let out = layoutctl(&["inspect", "--dir", &path_str(&path), "--json"], &[]);
    assert_exit(&out, 4);
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["exit_code"], 4);
    assert_eq!(report["damage_line"], line);
    assert!(
        report["damage"]
            .as_str()
            .unwrap()
            .contains("neither a comment"),
        "{report}"
    );
    let out = layoutctl(&["inspect", "--dir", &path_str(&path)], &[]);
    assert!(
        stdout(&out).contains(&format!(">>{line:>4}  layout.version 1")),
        "{}",
        stdout(&out)
    );

    // Not UTF-8: the byte is named.
    let mut bytes = original.clone().into_bytes();
    let at = original.find("layout.feature=").unwrap() + 2;
    bytes[at] = 0xff;
    fs::write(&path, &bytes).unwrap();
    let out = layoutctl(&["inspect", "--dir", &path_str(&path), "--json"], &[]);
    assert_exit(&out, 4);
    let report = json(&out);
    assert_eq!(report["damage_byte"], at);
    assert_eq!(report["damage_line"], line + 1);

    // Truncated.
    fs::write(&path, &original.as_bytes()[..original.len() / 2]).unwrap();
    assert_exit(&layoutctl(&["inspect", "--dir", &path_str(&path)], &[]), 4);
    // A directory where the file belongs.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let out = layoutctl(
        &["inspect", "--dir", &path_str(path.parent().unwrap())],
        &[],
    );
    assert_exit(&out, 4);
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inspect_shows_control_bytes_planted_in_a_version_file_escaped_never_raw() {
    let fx = Fixture::start();
    let path = fx.version_path();
    let original = fs::read_to_string(&path).unwrap();
    // A planted comment line with an escape sequence (clear screen) and a carriage return
    // forging a verdict, in a damaged file (so every line is listed).
    let planted = original.replacen(
        "layout.version=1",
        "layout.version=3\n# \u{1b}[2J\rverdict        OK",
        1,
    );
    fs::write(&path, planted).unwrap();
    let out = layoutctl(
        &["inspect", "--dir", &path_str(path.parent().unwrap())],
        &[],
    );
    assert_exit(&out, 4);
    let text = stdout(&out);
    assert!(
        !text.contains('\u{1b}'),
        "a raw ESC reached the terminal: {text:?}"
    );
    assert!(
        !text.contains('\r'),
        "a raw carriage return reached the terminal: {text:?}"
    );
    assert!(text.contains(r"\u{1b}[2J\rverdict"), "{text}");
}

#[test]
fn inspect_without_a_version_file_is_exit_code_5() {
    let dir = tempfile::tempdir().unwrap();
    let out = layoutctl(&["inspect", "--dir", &path_str(dir.path())], &[]);
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("no VERSION file"), "{}", stderr(&out));
    let out = layoutctl(&["inspect", "--dir", &path_str(dir.path()), "--json"], &[]);
    assert_exit(&out, 5);
    assert_eq!(json(&out)["exit_code"], 5);
}

#[test]
fn finalize_watch_on_a_finalized_component_succeeds_whoever_asks() {
    let fx = Fixture::start();
    assert_exit(
        &fx.layoutctl(&["finalize", "--watch", "--client-id", "ops@host"]),
        0,
    );
    // A CI rerun under another client id, with and without takeover, and to a target
    // below the MLV: nothing to do, and it says so.
    for extra in [&[][..], &["--takeover"], &["--to", "MultiTenancy"]] {
        let mut args = vec!["finalize", "--watch", "--client-id", "ci-rerun"];
        args.extend_from_slice(extra);
        let out = fx.layoutctl(&args);
        assert_exit(&out, 0);
        assert!(
            stdout(&out).contains("already finalized: metadata layout version 3"),
            "{}",
            stdout(&out)
        );
    }
    let out = fx.layoutctl(&["finalize", "--watch", "--json", "--client-id", "ci-rerun"]);
    assert_exit(&out, 0);
    let watched = json(&out);
    assert_eq!(watched["ok"], true);
    assert_eq!(watched["finalization"]["metadata_layout_version"], 3);
    // The history still names the one who finalized.
    let out = fx.layoutctl(&["finalization-status", "--json"]);
    assert_eq!(json(&out)["client_id"], "ops@host");
}

#[test]
fn a_finalize_whose_answer_is_lost_after_the_server_finalized_reports_the_layout_reached() {
    let fx = Fixture::start();
    let service = fx.service.clone();
    // The endpoint finalizes (the proxy waits for a background run to end), then the
    // answer is lost on the way back.
    let proxy = cutting_proxy(fx.addr, "finalize", true, move || {
        let _ = service.join_finalization();
    });
    let endpoint = format!("http://{proxy}");
    let token_file = path_str(&fx.token_file());
    let run = |extra: &[&str]| {
        let mut args = vec!["--endpoint", &endpoint, "--token-file", &token_file];
        args.extend_from_slice(extra);
        layoutctl(&args, &[])
    };
    let out = run(&["finalize", "--client-id", "ops"]);
    assert_exit(&out, 0);
    let (text, log) = (stdout(&out), stderr(&out));
    assert!(!log.contains("cannot reach"), "{log}");
    assert!(log.contains("answer was lost"), "{log}");
    assert!(text.contains("metadata layout version 3"), "{text}");
    assert_eq!(fx.service.status().unwrap().metadata_layout_version, 3);
    // Again, in JSON: already there, still not "unreachable".
    let out = run(&["finalize", "--client-id", "ops", "--json"]);
    assert_exit(&out, 0);
    let answer = json(&out);
    assert_eq!(answer["outcome"], "answer-lost");
    assert_eq!(answer["target_reached"], true);
    assert_eq!(answer["status"]["metadata_layout_version"], 3);
}

#[test]
fn a_prepare_whose_answer_is_lost_reports_what_the_status_shows() {
    let fx = Fixture::start();
    let token_file = path_str(&fx.token_file());
    let run = |proxy: SocketAddr, args: &[&str]| {
        let endpoint = format!("http://{proxy}");
        let mut all = vec!["--endpoint", &endpoint, "--token-file", &token_file];
        all.extend_from_slice(args);
        layoutctl(&all, &[])
    };
    // Prepared, then the answer is lost: the status shows it took effect.
    let prepared = cutting_proxy(fx.addr, "prepare", true, || {});
    let out = run(prepared, &["prepare"]);
    assert_exit(&out, 0);
    let (text, log) = (stdout(&out), stderr(&out));
    assert!(!log.contains("cannot reach"), "{log}");
    assert!(log.contains("answer was lost"), "{log}");
    assert!(text.contains("prepared at log index"), "{text}");
    assert_eq!(
        fx.service.status().unwrap().prepare.state,
        layout_core::admin::WirePrepareState::Prepared
    );

    // cancel-prepare never delivered: the client cannot know; the status says where the
    // component stands. Exit 6.
    let dropped = cutting_proxy(fx.addr, "cancel-prepare", false, || {});
    let out = run(dropped, &["cancel-prepare"]);
    assert_exit(&out, 6);
    let log = stderr(&out);
    assert!(
        log.contains("the outcome of cancel-prepare is unknown"),
        "{log}"
    );
    assert!(log.contains("prepare state PREPARE_COMPLETED"), "{log}");
    assert_eq!(
        fx.service.status().unwrap().prepare.state,
        layout_core::admin::WirePrepareState::Prepared
    );
}

#[test]
fn a_finalize_whose_answer_is_lost_below_the_target_is_an_unknown_outcome_exit_code_6() {
    let fx = Fixture::start();
    // The request never reaches the endpoint, but the client cannot know that.
    let proxy = cutting_proxy(fx.addr, "finalize", false, || {});
    let endpoint = format!("http://{proxy}");
    let token_file = path_str(&fx.token_file());
    let out = layoutctl(
        &[
            "--endpoint",
            &endpoint,
            "--token-file",
            &token_file,
            "finalize",
        ],
        &[],
    );
    assert_exit(&out, 6);
    let log = stderr(&out);
    assert!(!log.contains("cannot reach"), "{log}");
    assert!(log.contains("the outcome of finalize is unknown"), "{log}");
    assert!(
        log.contains("metadata layout version 1 (BucketLayoutSupport), below the target 3"),
        "{log}"
    );
    let out = layoutctl(
        &[
            "--endpoint",
            &endpoint,
            "--token-file",
            &token_file,
            "finalize",
            "--json",
        ],
        &[],
    );
    assert_exit(&out, 6);
    assert_eq!(json(&out)["exit_code"], 6);
    assert_eq!(fx.service.status().unwrap().metadata_layout_version, 1);
}

#[test]
fn text_from_the_endpoint_is_printed_without_escape_sequences() {
    let fx = Fixture::start();
    fx.node
        .open_containers
        .store(1, std::sync::atomic::Ordering::SeqCst);
    *fx.node.condition_detail.lock() = " \u{1b}[31mred\u{1b}[0m\r\nforged line".to_owned();
    // An error message (conditions-failed echoes the condition's reason).
    let out = fx.layoutctl(&["finalize"]);
    assert_exit(&out, 1);
    let log = stderr(&out);
    assert!(
        log.contains("conditions-failed") || log.contains("condition(s) failed"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(log.contains(r"\u{1b}[31mred"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    // A dry run's condition result on stdout.
    let out = fx.layoutctl(&["finalize", "--dry-run"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains(r"\u{1b}[31mred"), "{text}");
    // JSON stays JSON: escaped by the encoder, the text intact.
    let out = fx.layoutctl(&["finalize", "--json"]);
    assert_exit(&out, 1);
    assert!(!stdout(&out).contains('\u{1b}'), "{}", stdout(&out));
    assert!(
        json(&out)["error"]
            .as_str()
            .unwrap()
            .contains("\u{1b}[31mred"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_dry_run_refuses_the_overrides_the_run_refuses() {
    let fx = Fixture::start();
    for overrides in [
        &["--override", "no-such-condition", "--reason", "why not"][..],
        &["--override", "no-open-containers", "--reason", " "],
    ] {
        let mut args = vec!["finalize", "--dry-run"];
        args.extend_from_slice(overrides);
        let out = fx.layoutctl(&args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
    }
}
