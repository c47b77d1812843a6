//! `kvstore copy` between kvstore processes: a sharded blue (two processes, one with its
//! clock 30 s behind) copied into green with a transform, updates and deletes in blue
//! between passes and while the copier is killed (`SIGKILL`) and restarted; green ends equal to
//! the transform of blue, nothing resurrected or truncated, and the cut-over check says
//! so. Against green taking writes of its own, a newer value there is never overwritten.
//! Without an overlap window, a late commit of the skewed shard is missed (the control).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvstore::KvClient;

use super::support::kvstore_bin;

/// A kvstore child process, stopped (stdin closed, then killed) when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(kvstore_bin())
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kvstore starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("kvstore prints its address")
                .expect("a line");
            if let Some(addr) = line.strip_prefix("http ") {
                break addr.parse().expect("an address");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Node {
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> KvClient {
        KvClient::new(self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kvstore copy` with `args`.
fn copy_command(args: &[&str]) -> Command {
    let mut command = Command::new(kvstore_bin());
    command.arg("copy").args(args).env("RUST_LOG", "warn");
    command
}

/// Runs `kvstore copy` to its end; its stdout.
fn copy(args: &[&str]) -> (Output, String) {
    let output = copy_command(args)
        .stdin(Stdio::null())
        .output()
        .expect("kvstore copy runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// The `name=value` fields of the line of `stdout` starting with `prefix`.
fn fields(stdout: &str, prefix: &str) -> BTreeMap<String, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {stdout}"));
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn count(stdout: &str, prefix: &str, field: &str) -> u64 {
    fields(stdout, prefix)[field].parse().expect("a number")
}

/// Puts `keys` (key, value) into `node`, from 4 threads.
fn put_all(node: &Node, keys: &[(String, String)]) {
    std::thread::scope(|s| {
        for chunk in keys.chunks(keys.len().div_ceil(4).max(1)) {
            let client = node.client();
            s.spawn(move || {
                for (k, v) in chunk {
                    client.put(k, v).expect("put");
                }
            });
        }
    });
}

/// Every live key of `node`, through the paged list.
fn all(node: &Node) -> BTreeMap<String, String> {
    node.client().list("").expect("list").into_iter().collect()
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn a_sharded_skewed_blue_is_copied_through_updates_deletes_and_a_sigkilled_copier() {
    let blue_a = Node::start(&[]);
    let blue_b = Node::start(&["--clock-offset-ms", "-30000"]);
    let green = Node::start(&[]);
    // 20,000 keys: 12,000 on shard A, 8,000 on shard B.
    let a_keys: Vec<(String, String)> = (0..12_000)
        .map(|i| (format!("a/{i:05}"), format!("value a{i}")))
        .collect();
    let b_keys: Vec<(String, String)> = (0..8_000)
        .map(|i| (format!("b/{i:05}"), format!("value b{i}")))
        .collect();
    put_all(&blue_a, &a_keys);
    put_all(&blue_b, &b_keys);
    // What blue holds, kept beside it.
    let mut model: BTreeMap<String, String> = a_keys.iter().chain(&b_keys).cloned().collect();
    let (from_a, from_b, to) = (blue_a.url(), blue_b.url(), green.url());
    let base = [
        "--from",
        from_a.as_str(),
        "--from",
        from_b.as_str(),
        "--to",
        to.as_str(),
        "--transform",
        "upper-values",
        "--overlap-window-ms",
        "60000",
    ];
    let args = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };

    // Pass 1: everything, with no silent stop at 10,000 keys.
    let (out, stdout) = copy(&args(&["--page-size", "1000"]));
    assert!(out.status.success(), "{stdout}");
    assert_eq!(count(&stdout, "copy done:", "copied"), 20_000, "{stdout}");
    assert_eq!(count(&stdout, "copy done:", "failed"), 0);
    assert_eq!(
        fields(&stdout, "cut-over check:")["agree"],
        "true",
        "{stdout}"
    );
    assert_eq!(count(&stdout, "cut-over check:", "green"), 20_000);

    // Between passes: updates and deletes on both shards.
    let (ca, cb) = (blue_a.client(), blue_b.client());
    let put = |model: &mut BTreeMap<String, String>, client: &KvClient, k: String, v: String| {
        client.put(&k, &v).expect("put");
        model.insert(k, v);
    };
    let delete = |model: &mut BTreeMap<String, String>, client: &KvClient, k: String| {
        client.delete(&k).expect("delete");
        model.remove(&k);
    };
    for i in (0..12_000).step_by(4) {
        put(
            &mut model,
            &ca,
            format!("a/{i:05}"),
            format!("updated a{i}"),
        );
    }
    for i in (1..8_000).step_by(10) {
        delete(&mut model, &cb, format!("b/{i:05}"));
    }
    for i in (2..12_000).step_by(10) {
        delete(&mut model, &ca, format!("a/{i:05}"));
    }

    // A continuous copier, SIGKILLed once it saved a mark past the first pass's.
    let green_client = green.client();
    let mark_before = green_client.copy_mark("default").expect("mark");
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut copier = copy_command(&args(&["--continuous", "--page-size", "100"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("the log file"))
        .spawn()
        .expect("copier starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the copier saved no new mark");
        assert!(
            copier.try_wait().expect("wait").is_none(),
            "the copier ended: {}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        if green_client.copy_mark("default").expect("mark") != mark_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    copier.kill().expect("SIGKILL");
    copier.wait().expect("reaped");

    // While it is down: more updates and deletes, a key deleted and put again, and
    // late commits on the skewed shard, stamped 30 s before the mark.
    for i in (3..12_000).step_by(50) {
        delete(&mut model, &ca, format!("a/{i:05}"));
    }
    delete(&mut model, &ca, "a/00000".into()); // updated, copied, deleted
    put(&mut model, &cb, "b/00001".into(), "back again".into()); // deleted, now back
    for i in 0..50 {
        put(&mut model, &cb, format!("b/late{i:02}"), "late".into());
    }
    for i in (0..8_000).step_by(100) {
        put(
            &mut model,
            &cb,
            format!("b/{i:05}"),
            format!("late update b{i}"),
        );
    }

    // The restarted copier resumes from the saved mark and finishes.
    let (out, stdout) = copy(&args(&["--page-size", "500"]));
    assert!(out.status.success(), "{stdout}");
    assert_ne!(
        fields(&stdout, "copy done:")["resumed_from"],
        "none",
        "{stdout}"
    );
    assert_eq!(count(&stdout, "copy done:", "failed"), 0);
    assert!(count(&stdout, "copy done:", "deleted") > 0, "{stdout}");
    assert_eq!(
        fields(&stdout, "cut-over check:")["agree"],
        "true",
        "{stdout}"
    );

    // Checked independently: green is the transform of blue, key for key.
    let mut blue = all(&blue_a);
    blue.extend(all(&blue_b));
    assert!(blue == model, "blue's list is complete (no truncation)");
    let want: BTreeMap<String, String> = model
        .into_iter()
        .map(|(k, v)| (k, v.to_uppercase()))
        .collect();
    let got = all(&green);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "green differs from the transform of blue");
    assert!(!got.contains_key("a/00002"), "a deleted key resurrected");
    assert!(!got.contains_key("a/00000"), "a deleted key resurrected");
    assert_eq!(got["b/00001"], "BACK AGAIN");
    assert_eq!(got["b/late07"], "LATE");
    assert_eq!(got["b/00100"], "LATE UPDATE B100");
    assert_eq!(
        count(&stdout, "cut-over check:", "green"),
        want.len() as u64
    );
}

#[test]
fn green_taking_writes_keeps_its_newer_values_and_no_window_misses_a_skewed_late_commit() {
    let blue_a = Node::start(&[]);
    let blue_b = Node::start(&["--clock-offset-ms", "-30000"]);
    let green = Node::start(&[]);
    let keys: Vec<(String, String)> = (0..500)
        .map(|i| (format!("k{i:04}"), format!("v{i}")))
        .collect();
    put_all(&blue_a, &keys);
    blue_b.client().put("b-first", "b").expect("put");
    blue_a.client().put("a-last", "a").expect("put"); // the mark: A's clock, now
    let (from_a, from_b, to) = (blue_a.url(), blue_b.url(), green.url());
    let run = |window: &'static str| {
        copy(&[
            "--from",
            &from_a,
            "--from",
            &from_b,
            "--to",
            &to,
            "--page-size",
            "64",
            "--overlap-window-ms",
            window,
        ])
    };
    let (out, stdout) = run("0");
    assert!(out.status.success(), "{stdout}");
    assert_eq!(count(&stdout, "copy done:", "copied"), 502);

    // Blue updates 100 keys; then green, already taking writes, writes 50 of them.
    let (a, g) = (blue_a.client(), green.client());
    for i in 0..100 {
        a.put(&format!("k{i:04}"), &format!("blue v2 {i}"))
            .expect("put");
    }
    for i in 0..50 {
        g.put(&format!("k{i:04}"), &format!("green's own {i}"))
            .expect("put");
    }
    // Shard B commits late: its clock is 30 s behind, so the stamp is below the mark.
    blue_b.client().put("b-late", "late").expect("put");

    // Without an overlap window: green's newer values stay, blue's other updates are
    // copied, and the late commit is missed; the check reports both.
    let (out, stdout) = run("0");
    assert_eq!(out.status.code(), Some(3), "the check disagrees: {stdout}");
    assert_eq!(count(&stdout, "copy done:", "copied"), 50, "{stdout}");
    assert!(
        count(&stdout, "copy done:", "skipped_not_newer") >= 50,
        "{stdout}"
    );
    assert_eq!(
        g.get("k0007").expect("get").as_deref(),
        Some("green's own 7")
    );
    assert_eq!(g.get("k0077").expect("get").as_deref(), Some("blue v2 77"));
    assert_eq!(
        g.get("b-late").expect("get"),
        None,
        "missed without a window"
    );
    let check = fields(&stdout, "cut-over check:");
    assert_eq!(
        (check["missing"].as_str(), check["differing"].as_str()),
        ("1", "50")
    );

    // With a window wider than the skew: the late commit is copied; green's own values
    // are still never overwritten.
    let (_, stdout) = run("60000");
    assert_eq!(count(&stdout, "copy done:", "copied"), 1, "{stdout}");
    assert_eq!(g.get("b-late").expect("get").as_deref(), Some("late"));
    assert_eq!(
        g.get("k0007").expect("get").as_deref(),
        Some("green's own 7")
    );
    let check = fields(&stdout, "cut-over check:");
    assert_eq!(
        (check["missing"].as_str(), check["differing"].as_str()),
        ("0", "50")
    );
}

#[test]
fn copy_refuses_bad_arguments_with_a_clear_message() {
    let (out, _) = copy(&["--from", "127.0.0.1:1", "--to", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected http://HOST:PORT"));
    let (out, _) = copy(&[
        "--from",
        "http://127.0.0.1:1",
        "--to",
        "http://127.0.0.1:1",
        "--transform",
        "reverse",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown transform \"reverse\"") && stderr.contains("upper-values"));
}
