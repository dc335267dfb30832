//! HTTPS under a real systemd (the system-test sandbox, `make install`):
//! `sockhook.socket` and `sockhook-https.socket` on one `sockhook.service`,
//! the certificate and key handed over by `LoadCredential=` from a root-only
//! directory (as certbot's live/NAME is), token and GitHub hooks over HTTPS,
//! the plain socket still serving, and the idle exit with both sockets back
//! to listening.

mod support;

use support::harness::github_signature;
use support::system::*;

/// The root-only directory the certificate lives in, like /etc/letsencrypt/live.
const LIVE: &str = "/root/live/hooks";
/// The HTTPS URL base inside the sandbox (sockhook-https.socket's 443).
const HTTPS: &str = "https://localhost";

#[test]
fn both_sockets_one_service_certificate_by_load_credential() {
    let Some(sys) = System::install() else {
        return;
    };
    // A CA and a certificate for localhost, made inside; the key is root's only.
    sys.run_ok(&format!(
        "set -e; umask 077; mkdir -p {LIVE}; cd {LIVE}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
           -out ca.crt -days 30 -subj '/CN=sockhook system test CA' \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>&1; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout privkey.pem \
           -out server.csr -subj /CN=localhost 2>&1; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' >ext; \
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -days 30 -extfile ext \
           -out fullchain.pem 2>&1; \
         chmod 0644 ca.crt; chmod 0700 /root/live {LIVE}; \
         ln -s {LIVE}/fullchain.pem /etc/sockhook/tls.crt; \
         ln -s {LIVE}/privkey.pem /etc/sockhook/tls.key"
    ));
    sys.run_ok(&format!("cp {LIVE}/ca.crt /tmp/ca.crt"));
    // Root-only indeed: user sockhook cannot read the key itself.
    let direct = sys.run(&format!(
        "setpriv --reuid=sockhook --regid=sockhook --clear-groups cat {LIVE}/privkey.pem"
    ));
    assert!(
        !direct.status.success(),
        "user sockhook reads the key directly"
    );

    let gh_secret = format!("gh-secret-{}", sys.sb.name());
    sys.sb.write_file("/etc/sockhook/github-test", &gh_secret);
    sys.run_ok(
        "chown root:sockhook /etc/sockhook/github-test && chmod 0640 /etc/sockhook/github-test",
    );
    sys.hook("record", &recorder("record"));
    sys.hook(
        "gh",
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"cat >{STATE}/gh.body\"]\nauth = \"github\"\nsecret = \"/etc/sockhook/github-test\"\n"
        ),
    );
    let check = sys.run_ok("sockhook check 2>&1");
    assert!(
        check.contains("/etc/sockhook/tls.crt: ok: HTTPS certificate chain"),
        "{check}"
    );

    sys.run_ok("systemctl start sockhook.socket sockhook-https.socket");
    sys.assert_listening("sockhook.socket");
    sys.assert_listening("sockhook-https.socket");
    let token = sys.token("/hooks/record");
    let curl_https = |args: &str| sys.curl(&format!("--cacert /tmp/ca.crt {args}"));

    // A token over HTTPS, verified against the CA, and the plain socket.
    assert_eq!(
        curl_https(&format!(
            "-u {token}: --data-binary over-https {HTTPS}/hooks/record"
        )),
        "204"
    );
    assert_eq!(sys.post("record", &token, "over-http"), "204");
    // GitHub over HTTPS, signed here.
    let body = "{\"ref\":\"refs/heads/main\"}";
    sys.sb.write_file("/tmp/gh-body", body);
    let signature = github_signature(gh_secret.as_bytes(), body.as_bytes());
    assert_eq!(
        curl_https(&format!(
            "-H 'X-GitHub-Event: push' -H {} -H 'Content-Type: application/json' \
             --data-binary @/tmp/gh-body {HTTPS}/hooks/gh",
            q(&signature)
        )),
        "204"
    );
    // Without the CA, curl refuses the certificate: it is the test's, not some other.
    assert_eq!(
        sys.curl(&format!("-u {token}: -d x {HTTPS}/hooks/record")),
        "000"
    );

    let log = sys.wait("both runs of record in the log", PATIENCE, || {
        let log = sys.log("sockhook.service");
        (log.matches("hook record: run").count() >= 2 && log.contains("hook gh: run"))
            .then_some(log)
    });
    let recorded = sys.wait("record.log with two lines", PATIENCE, || {
        sys.read(&format!("{STATE}/record.log"))
            .filter(|t| t.lines().count() == 2)
    });
    let mut lines: Vec<&str> = recorded.lines().collect();
    lines.sort();
    assert_eq!(lines, ["over-http", "over-https"], "{log}");
    let gh_body = sys.wait("gh.body", PATIENCE, || {
        sys.read(&format!("{STATE}/gh.body"))
    });
    assert_eq!(gh_body, body);
    // One process served both sockets, HTTPS by its name.
    assert!(
        log.contains("https://[::]:443") && log.contains("http://[::]:7777"),
        "{log}"
    );
    assert!(
        log.contains("HTTPS: certificate chain of 1 certificate(s) from /run/credentials/sockhook.service/tls.crt"),
        "{log}"
    );
    assert_eq!(sys.starts(), 1, "{log}");
    // Nothing of the key in the journal.
    let key = sys.run_ok(&format!("cat {LIVE}/privkey.pem"));
    let journal = sys.run_ok("journalctl -b --no-pager -o cat");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!journal.contains(line), "the journal shows the key");
    }

    // Idle exit: the service stops, both sockets listen again, and the next
    // HTTPS request starts it anew.
    sys.wait_stopped("sockhook.service");
    sys.wait_listening("sockhook.socket");
    sys.wait_listening("sockhook-https.socket");
    sys.wait_log(&["exiting (idle)"], PATIENCE);
    assert_eq!(
        curl_https(&format!(
            "-u {token}: --data-binary again {HTTPS}/hooks/record"
        )),
        "204"
    );
    sys.wait("a second activation", PATIENCE, || {
        (sys.starts() == 2).then_some(())
    });
}

/// The indented block of README.md that starts with `first` (a line of
/// its own, such as `[Socket]`), up to the next blank line, unindented.
fn readme_block(first: &str) -> String {
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    let start = readme
        .find(&format!("\n    {first}\n"))
        .unwrap_or_else(|| panic!("README.md has no block starting with {first:?}"));
    readme[start + 1..]
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect()
}

/// The README's systemd set-up for a reverse proxy, as drop-ins: the plain
/// socket on /run/sockhook/http.sock and `--trusted-proxy unix`. A Unix peer
/// (curl here, nginx in production) says who the client is, and that is
/// what the log and the command see; the socket survives the idle exit and
/// the service's RuntimeDirectory= of the same name.
#[test]
fn behind_a_proxy_the_readme_drop_ins_serve_on_a_unix_socket() {
    let Some(sys) = System::install() else {
        return;
    };
    let socket = readme_block("[Socket]");
    assert!(
        socket.contains("ListenStream=/run/sockhook/http.sock"),
        "{socket}"
    );
    let service = readme_block("[Service]");
    assert!(service.contains("--trusted-proxy unix"), "{service}");
    sys.sb
        .write_file("/etc/systemd/system/sockhook.socket.d/proxy.conf", &socket);
    sys.sb.write_file(
        "/etc/systemd/system/sockhook.service.d/proxy.conf",
        &service,
    );
    sys.run_ok("systemctl daemon-reload");
    sys.hook(
        "env",
        &format!("command = [\"/bin/sh\", \"-c\", \"env >{STATE}/env\"]\nauth = \"token\"\n"),
    );
    sys.start_socket();
    let mode = sys.run_ok("stat -c '%a %G' /run/sockhook/http.sock");
    assert_eq!(mode.trim(), "660 www-data");
    let token = sys.token("/hooks/env");
    let post = |client: &str| {
        sys.curl(&format!(
            "--unix-socket /run/sockhook/http.sock -H 'X-Forwarded-For: {client}' \
             -u {token}: -d x http://localhost/hooks/env"
        ))
    };
    assert_eq!(post("198.51.100.7"), "204");
    sys.wait_log(&["198.51.100.7 via unix POST /hooks/env 204"], PATIENCE);
    let env = sys.wait("the command's environment", PATIENCE, || {
        sys.read(&format!("{STATE}/env"))
    });
    assert!(env.contains("SOCKHOOK_REMOTE_ADDR=198.51.100.7"), "{env}");
    // Idle exit, then a second activation through the same socket path.
    sys.wait_stopped("sockhook.service");
    sys.wait_listening("sockhook.socket");
    assert_eq!(post("198.51.100.8"), "204");
    sys.wait_log(&["198.51.100.8 via unix POST /hooks/env 204"], PATIENCE);
    assert_eq!(sys.starts(), 2);
}
