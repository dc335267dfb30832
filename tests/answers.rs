//! Answers that say what happened (sockhook.toml(5), `respond`): through the
//! real binary over real TCP, with raw sockets, curl and Python `requests` as
//! clients. `respond = "after-run"` answers with the run's outcome and stdout,
//! `respond = "stream"` sends stdout as the run prints it; both bounded by
//! `respond_timeout`, both complete before the connection closes.
//!
//! Runs that must still be going while a test looks wait for a gate file the
//! test creates, so nothing here depends on how fast the machine is.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::harness::*;

/// Sends a POST to `/hooks/NAME` on a connection of its own and returns the
/// connection, its request written and the write side still open.
fn send(server: &Server, name: &str, auth: &str, body: &[u8]) -> TcpStream {
    let mut stream = server.connect();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(&post(&format!("/hooks/{name}"), &[auth], body))
        .unwrap();
    stream
}

/// The run a response names in `X-Sockhook-Run` (`run PID …`): its pid.
fn run_pid(reply: &Reply) -> u32 {
    let run = reply
        .header("x-sockhook-run")
        .unwrap_or_else(|| panic!("no X-Sockhook-Run: {reply:?}"));
    run.strip_prefix("run ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("X-Sockhook-Run names no run: {run:?}"))
}

/// Decodes a chunked body (RFC 9112 §7.1): the data and the trailer section.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, String) {
    let mut data = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk-size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            return (data, String::from_utf8(body.to_vec()).unwrap());
        }
        data.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n", "chunk data ends with CRLF");
        body = &body[size + 2..];
    }
}

/// The raw body bytes (after the head) of `reply`.
fn raw_body(reply: &Reply) -> &[u8] {
    let at = reply
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    &reply.bytes[at + 4..]
}

#[test]
fn after_run_exit_0_is_200_with_the_exact_stdout() {
    let f = Fixture::new("after-run-ok");
    let script = f.script("ok.sh", "printf 'restarted kodi\\n'; cat >/dev/null");
    let auth = f.token_hook("ok", &script, "respond = \"after-run\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/ok", &[&auth], b"press");
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert_eq!(reply.body(), "restarted kodi\n");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let run = reply.header("x-sockhook-run").unwrap();
    assert!(run.contains(" exited 0 after "), "{run}");
    // The log says which request got which run's result.
    let pid = run_pid(&reply);
    server.wait_log(&format!("hook ok: run {pid} exited 0 after "), 1);
    server.wait_log(
        &format!("POST /hooks/ok 200 hook ok: run {pid} exited 0 after "),
        1,
    );
    server.wait_log("(answered after the run)", 1);
}

#[test]
fn after_run_content_type_is_the_hooks() {
    let f = Fixture::new("after-run-json");
    let script = f.script("json.sh", "printf '{\"type\":1}'");
    let auth = f.token_hook(
        "json",
        &script,
        "respond = \"after-run\"\ncontent_type = \"application/json\"\n",
    );
    let server = f.serve(&[]);
    let reply = server.post("/hooks/json", &[&auth], b"{}");
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(reply.body(), "{\"type\":1}");
}

#[test]
fn after_run_exit_3_mapped_is_409_and_logged_as_a_failure() {
    let f = Fixture::new("after-run-409");
    let script = f.script("conflict.sh", "echo 'already deploying'; exit 3");
    let auth = f.token_hook(
        "deploy",
        &script,
        "respond = \"after-run\"\nexit_status = { 3 = 409, 4 = 422 }\n",
    );
    let server = f.serve(&[]);
    let reply = server.post("/hooks/deploy", &[&auth], b"");
    assert_eq!(reply.status(), 409, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert_eq!(reply.body(), "already deploying\n");
    assert!(reply.header("x-sockhook-run").unwrap().contains("exited 3"));
    server.wait_log("exited 3", 1);
}

#[test]
fn after_run_a_2xx_mapping_does_not_make_a_failed_run_a_success_in_the_log() {
    let f = Fixture::new("after-run-2xx");
    let script = f.script("nothing.sh", "exit 2");
    let auth = f.token_hook(
        "nothing",
        &script,
        "respond = \"after-run\"\nexit_status = { 2 = 200 }\n",
    );
    let server = f.serve(&[]);
    let reply = server.post("/hooks/nothing", &[&auth], b"");
    assert_eq!(reply.status(), 200, "{reply:?}");
    server.wait_log("(answered after the run)", 1);
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("(answered after the run)"))
        .unwrap()
        .to_owned();
    assert!(line.contains("exited 2"), "{line}");
    assert!(
        line.starts_with("sockhook: warning: "),
        "a failed run is a warning: {line}"
    );
}

#[test]
fn after_run_other_failures_are_502_with_the_reason() {
    let f = Fixture::new("after-run-502");
    let script = f.script("fail.sh", "echo 'Unit kodi.service not found.' >&2; exit 5");
    let auth = f.token_hook("fail", &script, "respond = \"after-run\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/fail", &[&auth], b"");
    assert_eq!(reply.status(), 502, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    // stderr may hold secrets: not in the answer unless the hook opts in.
    assert!(!reply.body().contains("kodi"), "{reply:?}");
    assert!(reply.body().contains("exited 5"), "{reply:?}");
}

#[test]
fn after_run_include_stderr_puts_the_error_in_the_answer() {
    let f = Fixture::new("after-run-stderr");
    let script = f.script("fail.sh", "echo 'Unit kodi.service not found.' >&2; exit 5");
    let auth = f.token_hook(
        "fail",
        &script,
        "respond = \"after-run\"\ninclude_stderr = true\n",
    );
    let server = f.serve(&[]);
    let reply = server.post("/hooks/fail", &[&auth], b"");
    assert_eq!(reply.status(), 502, "{reply:?}");
    assert_eq!(reply.body(), "Unit kodi.service not found.\n");
}

#[test]
fn after_run_a_command_that_cannot_start_is_500_with_the_reason() {
    let f = Fixture::new("after-run-500");
    // Executable, so the hook loads; its interpreter does not exist, so exec fails.
    let script = f.dir.join("orphan.sh");
    fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let auth = f.token_hook("orphan", &script, "respond = \"after-run\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/orphan", &[&auth], b"");
    assert_eq!(reply.status(), 500, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert!(
        reply.body().starts_with("not started: unable to start"),
        "{reply:?}"
    );
    assert!(reply.body().contains("No such file"), "{reply:?}");
}

#[test]
fn after_run_a_timed_out_run_is_504() {
    let f = Fixture::new("after-run-504");
    let script = f.script("hang.sh", "exec sleep 60");
    let auth = f.token_hook(
        "hang",
        &script,
        "respond = \"after-run\"\ntimeout = 1\nrespond_timeout = 20\n",
    );
    let server = f.serve(&[]);
    let reply = server.post("/hooks/hang", &[&auth], b"");
    assert_eq!(reply.status(), 504, "{reply:?}");
    assert!(reply.body().contains("timed out"), "{reply:?}");
}

#[test]
fn after_run_past_respond_timeout_is_202_and_the_run_completes() {
    let f = Fixture::new("after-run-202");
    let done = f.dir.join("done");
    let script = f.script(
        "slow.sh",
        &format!("{}\necho finished > {}", f.gate_wait(), done.display()),
    );
    let auth = f.token_hook(
        "slow",
        &script,
        "respond = \"after-run\"\nrespond_timeout = 1\n",
    );
    let server = f.serve_guarded(&[]);
    let started = Instant::now();
    let reply = server.post("/hooks/slow", &[&auth], b"");
    assert_eq!(reply.status(), 202, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        reply.body().contains("still running after 1 s"),
        "{reply:?}"
    );
    assert!(!done.exists(), "the run cannot end before the gate opens");
    f.open_gate();
    server.wait_log("exited 0", 1);
    assert_eq!(fs::read_to_string(&done).unwrap(), "finished\n");
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn after_run_a_client_that_goes_away_does_not_stop_the_run() {
    let f = Fixture::new("after-run-gone");
    let done = f.dir.join("done");
    let script = f.script(
        "slow.sh",
        &format!("{}\necho finished > {}", f.gate_wait(), done.display()),
    );
    let auth = f.token_hook("slow", &script, "respond = \"after-run\"\n");
    let server = f.serve_guarded(&[]);
    let stream = send(&server, "slow", &auth, b"");
    server.wait_log("run ", 1);
    server.wait_log("started", 1);
    drop(stream);
    f.open_gate();
    server.wait_log("exited 0", 1);
    assert_eq!(fs::read_to_string(&done).unwrap(), "finished\n");
    // The process is fine afterwards.
    let script = f.script("ok.sh", "echo ok");
    let ok = f.token_hook("ok", &script, "respond = \"after-run\"\n");
    let reply = server.post("/hooks/ok", &[&ok], b"");
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.body(), "ok\n");
}

#[test]
fn after_run_output_over_the_cap_is_cut_with_a_marker() {
    let f = Fixture::new("after-run-cap");
    // 100,000 bytes in lines of 100: more than the 65,536 an answer carries.
    let script = f.script(
        "loud.sh",
        "i=0; while [ $i -lt 1000 ]; do printf '%099d\\n' $i; i=$((i+1)); done",
    );
    let auth = f.token_hook("loud", &script, "respond = \"after-run\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/loud", &[&auth], b"");
    assert_eq!(reply.status(), 200);
    assert!(reply.complete(), "{:?}", reply.error);
    let body = reply.body();
    let marker = "\n[sockhook: output cut at 65536 bytes]\n";
    assert!(body.ends_with(marker), "{}", &body[body.len() - 100..]);
    assert_eq!(body.len(), 65536 + marker.len());
    assert!(body.starts_with(&format!("{:099}\n{:099}\n", 0, 1)));
}

/// 5 clients during one run: the first gets that run's result, the 4 that
/// came while it ran are coalesced into one follow-up run and each gets its
/// result; every answer names its run.
#[test]
fn after_run_clients_during_a_run_get_the_result_of_the_follow_up_run() {
    let f = Fixture::new("after-run-five");
    let script = f.script(
        "gated.sh",
        &format!("{}\necho \"pid $$ body $(cat)\"", f.gate_wait()),
    );
    let auth = f.token_hook("gated", &script, "respond = \"after-run\"\n");
    let server = f.serve_guarded(&[]);
    let mut first = send(&server, "gated", &auth, b"b0");
    server.wait_log("started", 1);
    let mut later: Vec<TcpStream> = Vec::new();
    for i in 1..5 {
        later.push(send(&server, "gated", &auth, format!("b{i}").as_bytes()));
        // Each is accepted and queued before the next is sent, so that the
        // order of the bodies is known.
        if i == 1 {
            server.wait_log("run queued behind the one in progress", 1);
        } else {
            server.wait_log("queued run replaced by a newer request", i - 1);
        }
    }
    f.open_gate();
    let reply = read_all(&mut first);
    assert_eq!(reply.status(), 200, "{reply:?}");
    let first_pid = run_pid(&reply);
    assert_eq!(reply.body(), format!("pid {first_pid} body b0\n"));
    let replies: Vec<Reply> = later.iter_mut().map(read_all).collect();
    let follow_up = run_pid(&replies[0]);
    assert_ne!(follow_up, first_pid);
    for reply in &replies {
        assert_eq!(reply.status(), 200, "{reply:?}");
        assert!(reply.complete(), "{reply:?}");
        assert_eq!(run_pid(reply), follow_up, "{reply:?}");
        // The follow-up run has the newest body.
        assert_eq!(reply.body(), format!("pid {follow_up} body b4\n"));
    }
    server.wait_log("exited 0", 2);
    assert_eq!(
        server.log().matches(" started").count(),
        2,
        "{}",
        server.log()
    );
}

#[test]
fn stream_sends_the_first_chunk_before_the_run_ends() {
    let f = Fixture::new("stream-incremental");
    let script = f.script(
        "deploy.sh",
        &format!(
            "echo 'step 1: pulling'\n{}\necho 'step 2: done'",
            f.gate_wait()
        ),
    );
    let auth = f.token_hook("deploy", &script, "respond = \"stream\"\n");
    let server = f.serve_guarded(&[]);
    let mut stream = send(&server, "deploy", &auth, b"");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // Read until the first line has come, while the run waits for the gate.
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains("step 1: pulling\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first chunk: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{head}"
    );
    assert!(!head.contains("step 2"), "{head}");
    f.open_gate();
    let rest = read_all(&mut stream);
    assert!(rest.error.is_none(), "{rest:?}");
    seen.extend_from_slice(&rest.bytes);
    let reply = Reply {
        bytes: seen,
        error: None,
    };
    let (data, trailer) = dechunk(raw_body(&reply));
    assert_eq!(data, b"step 1: pulling\nstep 2: done\n");
    assert!(trailer.starts_with("X-Sockhook-Run: run "), "{trailer:?}");
    assert!(trailer.contains(" exited 0 after "), "{trailer:?}");
    assert!(trailer.ends_with("\r\n\r\n"), "{trailer:?}");
}

#[test]
fn stream_a_failing_run_says_so_in_the_trailer() {
    let f = Fixture::new("stream-fail");
    let script = f.script("fail.sh", "echo 'building'; exit 4");
    let auth = f.token_hook("fail", &script, "respond = \"stream\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/fail", &[&auth], b"");
    assert_eq!(reply.status(), 200, "{reply:?}");
    let (data, trailer) = dechunk(raw_body(&reply));
    assert_eq!(data, b"building\n");
    assert!(trailer.contains(" exited 4 after "), "{trailer:?}");
    server.wait_log("exited 4", 1);
}

#[test]
fn stream_a_command_that_cannot_start_is_500() {
    let f = Fixture::new("stream-500");
    let script = f.dir.join("orphan.sh");
    fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let auth = f.token_hook("orphan", &script, "respond = \"stream\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/orphan", &[&auth], b"");
    assert_eq!(reply.status(), 500, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert!(reply.body().starts_with("not started:"), "{reply:?}");
}

#[test]
fn stream_output_over_the_cap_is_cut_with_a_marker() {
    let f = Fixture::new("stream-cap");
    // 2,000,000 bytes in lines of 1,000: more than the 1 MiB a stream carries.
    let script = f.script(
        "loud.sh",
        "i=0; while [ $i -lt 2000 ]; do printf '%0999d\\n' $i; i=$((i+1)); done",
    );
    let auth = f.token_hook("loud", &script, "respond = \"stream\"\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/loud", &[&auth], b"");
    assert_eq!(reply.status(), 200);
    assert!(reply.error.is_none(), "{reply:?}");
    let (data, trailer) = dechunk(raw_body(&reply));
    let marker = b"\n[sockhook: output cut at 1048576 bytes]\n";
    assert_eq!(data.len(), 1024 * 1024 + marker.len());
    assert!(data.ends_with(marker));
    assert!(trailer.contains(" exited 0 after "), "{trailer:?}");
}

#[test]
fn a_key_that_needs_after_run_is_refused_before_run() {
    let f = Fixture::new("answer-keys");
    let script = f.script("ok.sh", "true");
    let auth = f.token_hook("ok", &script, "respond_timeout = 3\n");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/ok", &[&auth], b"");
    assert_eq!(reply.status(), 500, "{reply:?}");
    server.wait_log(
        "respond_timeout: only applies with respond = \"after-run\"",
        1,
    );
    for (extra, message) in [
        (
            "respond = \"later\"\n",
            "respond: \"later\" is not one of \"before-run\"",
        ),
        (
            "respond = \"after-run\"\nrespond_timeout = 0\n",
            "respond_timeout: 0 s is outside 1..=300",
        ),
        (
            "respond = \"after-run\"\nexit_status = { 300 = 200 }\n",
            "exit_status: \"300\" is not an exit code",
        ),
        (
            "respond = \"after-run\"\nexit_status = { 1 = 100 }\n",
            "exit_status: 1 = 100 is not a status from 200 to 599",
        ),
    ] {
        f.token_hook("ok", &script, extra);
        let out = Command::new(BIN)
            .arg("check")
            .arg("--hooks")
            .arg(&f.hooks)
            .arg("--key")
            .arg(&f.key)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: {text}");
        assert!(text.contains(message), "{extra}: {text}");
    }
}

/// curl shows a phone button's result: 200 and the text, or the failure status.
#[test]
fn curl_sees_the_result_and_the_failure() {
    let f = Fixture::new("after-run-curl");
    let ok = f.script("ok.sh", "echo 'kodi restarted'");
    let fail = f.script(
        "fail.sh",
        "echo 'Failed to restart kodi.service' >&2; exit 1",
    );
    let token_ok = f.token("/hooks/ok");
    f.token_hook("ok", &ok, "respond = \"after-run\"\n");
    let token_fail = f.token("/hooks/fail");
    f.token_hook(
        "fail",
        &fail,
        "respond = \"after-run\"\ninclude_stderr = true\n",
    );
    let server = f.serve_guarded(&[]);
    for (name, token, status, text) in [
        ("ok", &token_ok, "200", "kodi restarted\n"),
        (
            "fail",
            &token_fail,
            "502",
            "Failed to restart kodi.service\n",
        ),
    ] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "-u"])
            .arg(format!("{token}:"))
            .args(["-d", "press"])
            .arg(format!("http://{}/hooks/{name}", server.addr))
            .output()
            .expect("curl is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout, format!("{text}\n{status}"), "{out:?}");
    }
}

/// Python `requests`, the client of many scripts and bots.
#[test]
fn python_requests_sees_the_result_and_the_stream() {
    let have = Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true, but Python's requests is not installed (apt-get install python3-requests)"
        );
        eprintln!("skipped: Python's requests is not installed");
        return;
    }
    let f = Fixture::new("after-run-python");
    let ok = f.script("ok.sh", "echo 'kodi restarted'");
    let token_ok = f.token("/hooks/ok");
    f.token_hook(
        "ok",
        &ok,
        "respond = \"after-run\"\nexit_status = { 0 = 201 }\n",
    );
    let streamed = f.script("streamed.sh", "echo one; echo two; exit 3");
    let token_stream = f.token("/hooks/streamed");
    f.token_hook("streamed", &streamed, "respond = \"stream\"\n");
    let server = f.serve_guarded(&[]);
    let program = format!(
        r#"
import requests
base = "http://{addr}/hooks/"
r = requests.post(base + "ok", data=b"press", auth=("{token_ok}", ""), timeout=10)
print(r.status_code, repr(r.text), r.headers["X-Sockhook-Run"].split()[2])
r = requests.post(base + "streamed", data=b"", auth=("{token_stream}", ""), timeout=10, stream=True)
lines = list(r.iter_lines())
print(r.status_code, lines)
"#,
        addr = server.addr
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "201 'kodi restarted\\n' exited\n200 [b'one', b'two']\n"
    );
}

/// A phone button as the HTTP Shortcuts app makes the request: OkHttp, a
/// POST with the token as Bearer; prints the status, the run, and the body
/// (what the app shows in its dialog), then each streamed line as it comes.
const OKHTTP_BUTTON: &str = r#"
import okhttp3.*;
import java.io.BufferedReader;

public class Button {
    public static void main(String[] a) throws Exception {
        OkHttpClient client = new OkHttpClient();
        Request request = new Request.Builder().url(a[0])
            .header("Authorization", "Bearer " + a[1])
            .post(RequestBody.create(MediaType.parse("text/plain"), "pressed"))
            .build();
        try (Response response = client.newCall(request).execute()) {
            System.out.println("status " + response.code());
            System.out.println("run " + response.header("X-Sockhook-Run"));
            if (a.length > 2) {
                BufferedReader lines = new BufferedReader(response.body().charStream());
                for (String line; (line = lines.readLine()) != null; ) {
                    System.out.println("line " + line);
                }
            } else {
                System.out.print("body " + response.body().string());
            }
        }
    }
}
"#;

/// OkHttp (the HTTP Shortcuts app's client) sees the button's result: 200
/// and the command's words, or the failure and systemctl's message, and a
/// streamed deploy line by line.
#[test]
fn okhttp_sees_the_result_the_failure_and_the_stream() {
    let Some(classpath) = support::java::okhttp_class("Button", OKHTTP_BUTTON) else {
        return;
    };
    let f = Fixture::new("after-run-okhttp");
    let ok = f.script("ok.sh", "echo 'kodi restarted'");
    let token_ok = f.token("/hooks/ok");
    f.token_hook("ok", &ok, "respond = \"after-run\"\n");
    let fail = f.script(
        "fail.sh",
        "echo 'Failed to restart kodi.service: Unit kodi.service not found.' >&2; exit 5",
    );
    let token_fail = f.token("/hooks/fail");
    f.token_hook(
        "fail",
        &fail,
        "respond = \"after-run\"\ninclude_stderr = true\n",
    );
    let deploy = f.script(
        "deploy.sh",
        "echo 'pulling'; echo 'restarting'; echo 'done'",
    );
    let token_deploy = f.token("/hooks/deploy");
    f.token_hook("deploy", &deploy, "respond = \"stream\"\n");
    let server = f.serve_guarded(&[]);
    let button = |name: &str, token: &str, stream: bool| {
        let url = format!("http://{}/hooks/{name}", server.addr);
        let mut args = vec!["-cp", &classpath, "Button", &url, token];
        if stream {
            args.push("stream");
        }
        let out = output_within(
            Command::new("java")
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            PATIENCE,
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = button("ok", &token_ok, false);
    assert!(shown.starts_with("status 200\nrun run "), "{shown}");
    assert!(shown.ends_with("body kodi restarted\n"), "{shown}");
    let shown = button("fail", &token_fail, false);
    assert!(shown.starts_with("status 502\nrun run "), "{shown}");
    assert!(shown.contains(" exited 5 after "), "{shown}");
    assert!(
        shown.ends_with("body Failed to restart kodi.service: Unit kodi.service not found.\n"),
        "{shown}"
    );
    let shown = button("deploy", &token_deploy, true);
    assert!(shown.starts_with("status 200\nrun run "), "{shown}");
    assert!(
        shown.ends_with("line pulling\nline restarting\nline done\n"),
        "{shown}"
    );
}

/// Runs `tests/senders/sign.py ARGS` (the senders' own libraries) with `stdin`.
fn sign_py(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut all = vec![concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/senders/sign.py"
    )];
    all.extend_from_slice(args);
    run_with_stdin("python3", &all, stdin)
}

/// A Discord interactions endpoint end to end: Discord's PING must be
/// answered `{"type":1}` synchronously, a slash command with the reply the
/// command prints; both signed with Ed25519 by PyNaCl, as Discord signs.
#[test]
fn a_discord_interaction_is_answered_by_the_command() {
    let have = Command::new("python3")
        .args(["-c", "import nacl.signing"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true, but PyNaCl is not installed (.ci/run installs it)"
        );
        eprintln!("skipped: PyNaCl is not installed");
        return;
    }
    let f = Fixture::new("after-run-discord");
    let seed = f.dir.join("discord.seed");
    fs::write(
        &seed,
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    )
    .unwrap();
    let public = sign_py(&["public", "discord", seed.to_str().unwrap()], b"");
    assert!(public.status.success(), "{public:?}");
    let key = f.dir.join("discord.pub");
    fs::write(&key, &public.stdout).unwrap();
    let script = f.script(
        "interactions.sh",
        r#"body=$(cat)
case "$body" in
  *'"type":1'*) printf '{"type":1}' ;;
  *) printf '{"type":4,"data":{"content":"deployed main"}}' ;;
esac"#,
    );
    f.hook(
        "discord",
        &format!(
            "command = [{script:?}]\nauth = \"discord\"\nsecret = {key:?}\nrespond = \"after-run\"\ncontent_type = \"application/json\"\n"
        ),
    );
    let server = f.serve_guarded(&[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    for (body, reply_body) in [
        (r#"{"id":"1","type":1}"#, r#"{"type":1}"#),
        (
            r#"{"id":"2","type":2,"data":{"name":"deploy"}}"#,
            r#"{"type":4,"data":{"content":"deployed main"}}"#,
        ),
    ] {
        let signed = sign_py(
            &["sign", "discord", seed.to_str().unwrap(), &now, "-"],
            body.as_bytes(),
        );
        assert!(signed.status.success(), "{signed:?}");
        let headers = String::from_utf8(signed.stdout).unwrap();
        let headers: Vec<&str> = headers.lines().collect();
        assert!(
            headers
                .iter()
                .any(|h| h.starts_with("X-Signature-Ed25519: ")),
            "{headers:?}"
        );
        let mut all = headers.clone();
        all.push("Content-Type: application/json");
        let reply = server.post("/hooks/discord", &all, body.as_bytes());
        assert_eq!(reply.status(), 200, "{reply:?}\n{}", server.log());
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(reply.body(), reply_body);
    }
    // A forged interaction: 401, nothing runs.
    let forged = server.post(
        "/hooks/discord",
        &[
            &format!("X-Signature-Ed25519: {}", "0".repeat(128)),
            &format!("X-Signature-Timestamp: {now}"),
        ],
        br#"{"id":"3","type":1}"#,
    );
    assert_eq!(forged.status(), 401, "{forged:?}");
    assert_eq!(server.log().matches(" started").count(), 2);
}
