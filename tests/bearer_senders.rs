//! Senders that can only send Basic or Bearer credentials (Prometheus
//! Alertmanager, Grafana, Sonarr/Radarr, Home Assistant's `rest_command`),
//! served by token hooks: each family's credentials as its client puts them
//! on the wire, over real sockets, with curl and python-requests. The right
//! token runs the command (204); a wrong one is 401 and runs nothing.

mod support;

use std::fs;

use support::harness::*;

const IDLE: &str = "0.2";

/// Alertmanager's webhook body (version 4), trimmed.
const ALERT: &str = r#"{"version":"4","status":"firing","receiver":"sockhook","groupKey":"{}:{alertname=\"DiskFull\"}","alerts":[{"status":"firing","labels":{"alertname":"DiskFull","instance":"nas:9100"},"startsAt":"2026-12-07T10:00:00Z"}]}"#;
/// Grafana's webhook contact point body, trimmed.
const GRAFANA: &str = r#"{"receiver":"sockhook","status":"firing","title":"[FIRING:1] DiskFull","alerts":[{"labels":{"alertname":"DiskFull"}}]}"#;
/// Sonarr's "On Import" webhook body, trimmed.
const SONARR: &str =
    r#"{"eventType":"Download","series":{"title":"Example"},"episodes":[{"episodeNumber":1}]}"#;

/// python-requests posting `body` as JSON with `auth` (a Python expression:
/// `("user", "password")` for Basic, `None`) and `headers` (a Python dict).
fn requests(url: &str, auth: &str, headers: &str, body: &str) -> u16 {
    let program = format!(
        "import sys, requests\nr = requests.post(sys.argv[1], data=sys.stdin.buffer.read(), auth={auth}, headers={headers}, timeout=10)\nprint(r.status_code)"
    );
    let out = run_with_stdin("python3", &["-c", &program, url], body.as_bytes());
    assert!(out.status.success(), "python3: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn each_family_sends_its_token_the_way_its_client_does() {
    let fx = Fixture::new("bearer-senders");
    let recorder = fx.recorder("h");
    for name in ["alertmanager", "grafana", "sonarr", "homeassistant"] {
        fx.token_hook(
            name,
            &recorder,
            "[env]\nSOCKHOOK_STATUS = \"status\"\nSOCKHOOK_ALERT = \"alerts.0.labels.alertname\"\n",
        );
    }
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let url = |name: &str| format!("http://{}/hooks/{name}", server.addr);
    let token = |name: &str| fx.token(&format!("/hooks/{name}"));
    let wrong = "0".repeat(64);
    let json = "{'Content-Type': 'application/json'}";

    // Alertmanager: http_config.authorization.credentials_file, which
    // prometheus/common reads and trims (FileSecret.Fetch: TrimSpace), then
    // sends as "Authorization: Bearer <file>".
    let file = fx.dir.join("alertmanager.token");
    fs::write(&file, format!("{}\n", token("alertmanager"))).unwrap();
    let credentials = fs::read_to_string(&file).unwrap().trim().to_owned();
    for (credentials, status) in [(credentials.as_str(), 204), (wrong.as_str(), 401)] {
        let headers = format!(
            "{{'Content-Type': 'application/json', 'Authorization': 'Bearer {credentials}', 'User-Agent': 'Alertmanager/0.27.0'}}"
        );
        assert_eq!(
            requests(&url("alertmanager"), "None", &headers, ALERT),
            status
        );
    }
    server.wait_log("exited 0", 1);
    let env = String::from_utf8(fx.read("h.env")).unwrap();
    assert!(
        env.contains("SOCKHOOK_STATUS=firing\n") && env.contains("SOCKHOOK_ALERT=DiskFull\n"),
        "{env}"
    );

    // Grafana: a webhook contact point with Basic auth, the token as the
    // user name and any password.
    let basic = format!("('{}', 'grafana-password-unused')", token("grafana"));
    assert_eq!(requests(&url("grafana"), &basic, json, GRAFANA), 204);
    let basic = format!("('{wrong}', 'grafana-password-unused')");
    assert_eq!(requests(&url("grafana"), &basic, json, GRAFANA), 401);
    server.wait_log("exited 0", 2);

    // Sonarr/Radarr: the webhook connection's Username is the token, the
    // Password left empty: "Basic base64(token:)", as curl -u TOKEN: sends.
    for (user, status) in [(token("sonarr"), 204), (wrong.clone(), 401)] {
        let (got, stderr) = curl(&[
            "-u",
            &format!("{user}:"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            SONARR,
            &url("sonarr"),
        ]);
        assert_eq!(got, status, "{stderr}");
    }
    server.wait_log("exited 0", 3);

    // Home Assistant: rest_command with headers: authorization: "Bearer TOKEN".
    for (bearer, status) in [(token("homeassistant"), 204), (wrong.clone(), 401)] {
        let (got, stderr) = curl(&[
            "-H",
            &format!("authorization: Bearer {bearer}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"{"status":"on","alerts":[]}"#,
            &url("homeassistant"),
        ]);
        assert_eq!(got, status, "{stderr}");
    }
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 4, "{log}");
    assert_eq!(log.matches(" 401 ").count(), 4, "{log}");
    assert!(!log.contains(&token("grafana")), "{log}");
}
