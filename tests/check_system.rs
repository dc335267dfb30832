//! `sockhook check` run as root under a real systemd with `make install`'s
//! units, real sudo and the real sudoers drop-in: each set-up that fails on
//! the first request (or is unsafe) and the exact lines check prints for it,
//! and the set-ups that work, which it must pass.

mod support;

use support::sandbox::OutputText;
use support::system::*;

const UNIT: &str = "/usr/local/lib/systemd/system/sockhook.service";
const KODI: &str = "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/bin/systemctl\", \"restart\", \"kodi.service\"]\nauth = \"token\"\n";

/// One case: hook files (name, contents, mode) in a directory of their own,
/// extra `check` arguments, and what check must print and exit with.
struct Case {
    name: &'static str,
    hooks: Vec<(String, String, &'static str)>,
    args: &'static str,
    /// Every line but the summary, in order.
    lines: Vec<String>,
    exit: i32,
}

fn token_hook(command: &str) -> String {
    format!("command = [{command:?}]\nauth = \"token\"\n")
}

fn github_hook(secret: &str) -> String {
    format!("command = [\"/bin/true\"]\nauth = \"github\"\nsecret = {secret:?}\n")
}

fn dir(case: &str) -> String {
    format!("/etc/sockhook/check-{case}")
}

fn file(case: &str, hook: &str) -> String {
    format!("{}/{hook}.toml", dir(case))
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(65);
    let ok = |case: &str, hook: &str, runs: &str| {
        let _ = case;
        format!("/hooks/{hook}: ok: auth token, POST runs {runs}")
    };
    let f = file;
    vec![
        Case {
            name: "works",
            hooks: vec![
                ("kodi".into(), KODI.into(), "0644"),
                ("grouped".into(), token_hook("/usr/local/bin/c-ok"), "0640"),
                ("cred".into(), github_hook("cred-ok"), "0644"),
                ("readable".into(), github_hook("/etc/sockhook/c-group-secret"), "0644"),
                (
                    "allowed".into(),
                    "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/local/sbin/c-deploy\"]\nauth = \"token\"\n".into(),
                    "0644",
                ),
            ],
            args: "",
            lines: vec![
                ok("works", "allowed", "/usr/local/sbin/c-deploy as root (sudo -n)"),
                "/hooks/cred: ok: auth github, POST runs /bin/true".into(),
                ok("works", "grouped", "/usr/local/bin/c-ok"),
                ok("works", "kodi", "/usr/bin/systemctl restart kodi.service as root (sudo -n)"),
                "/hooks/readable: ok: auth github, POST runs /bin/true".into(),
            ],
            exit: 0,
        },
        Case {
            name: "unreadable",
            hooks: vec![("a".into(), token_hook("/bin/true"), "0600")],
            args: "",
            lines: vec![format!(
                "{a}: user sockhook cannot read this hook file (mode 0600, root:root); chgrp sockhook {a} && chmod 0640 {a}",
                a = f("unreadable", "a")
            )],
            exit: 1,
        },
        Case {
            name: "writable",
            hooks: vec![("a".into(), token_hook("/bin/true"), "0666")],
            args: "",
            lines: vec![format!(
                "{a} is writable by every user (mode 0666, root:root), who could make this hook run anything; chmod o-w {a}",
                a = f("writable", "a")
            )],
            exit: 1,
        },
        Case {
            name: "secret",
            hooks: vec![("gh".into(), github_hook("/etc/sockhook/c-root-secret"), "0644")],
            args: "",
            lines: vec![format!(
                "{}: secret: user sockhook cannot read /etc/sockhook/c-root-secret (mode 0600, root:root); chgrp sockhook /etc/sockhook/c-root-secret && chmod 0640 /etc/sockhook/c-root-secret, or keep it root-only and load it as a credential: LoadCredential=gh:/etc/sockhook/c-root-secret (systemctl edit sockhook.service) and secret = \"gh\"",
                f("secret", "gh")
            )],
            exit: 1,
        },
        Case {
            name: "credential",
            hooks: vec![
                ("gh".into(), github_hook("deploy"), "0644"),
                ("gone".into(), github_hook("cred-gone"), "0644"),
            ],
            args: "",
            lines: vec![
                format!(
                    "{}: secret: {UNIT} loads no credential \"deploy\"; add LoadCredential=deploy:/etc/sockhook/deploy (systemctl edit sockhook.service)",
                    f("credential", "gh")
                ),
                format!(
                    "{}: secret: credential \"cred-gone\" is loaded from /etc/sockhook/cred-gone, which does not exist; create it root-only (install -m 0600 /dev/null FILE) and write the sender's secret into it",
                    f("credential", "gone")
                ),
            ],
            exit: 1,
        },
        Case {
            name: "pasted",
            hooks: vec![("gh".into(), github_hook("It's a Secret to Everybody"), "0644")],
            args: "",
            lines: vec![format!(
                "{}: secret: the value looks like the secret itself (not shown here); this key names where the secret is kept, a systemd credential or an absolute path, never the secret: put it in a root-only file, e.g. /etc/sockhook/gh, add LoadCredential=gh:/etc/sockhook/gh to sockhook.service (systemctl edit sockhook.service) and write secret = \"gh\"",
                f("pasted", "gh")
            )],
            exit: 1,
        },
        Case {
            name: "key",
            hooks: vec![("a".into(), token_hook("/bin/true"), "0644")],
            args: "--key /etc/sockhook/key",
            lines: vec![
                "/hooks/a: ok: auth token, POST runs /bin/true".into(),
                "/etc/sockhook/key: user sockhook cannot read the server key (mode 0600, root:root); keep it root-only and give the service a copy: LoadCredential=key:/etc/sockhook/key (systemctl edit sockhook.service)".into(),
            ],
            exit: 1,
        },
        Case {
            name: "noexec",
            hooks: vec![("a".into(), token_hook("/usr/local/bin/c-noexec"), "0644")],
            args: "",
            lines: vec![format!(
                "{}: command: user sockhook cannot execute /usr/local/bin/c-noexec (mode 0750, root:root); chmod 0755 /usr/local/bin/c-noexec",
                f("noexec", "a")
            )],
            exit: 1,
        },
        Case {
            name: "interpreter",
            hooks: vec![("a".into(), token_hook("/usr/local/bin/c-interp"), "0644")],
            args: "",
            lines: vec![format!(
                "{}: command: /usr/local/bin/c-interp starts with #!/usr/bin/python9, which does not exist; install it or correct the script's first line",
                f("interpreter", "a")
            )],
            exit: 1,
        },
        Case {
            name: "sudo",
            hooks: vec![
                (
                    "args".into(),
                    "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/local/sbin/c-deploy\", \"--force\"]\nauth = \"token\"\n".into(),
                    "0644",
                ),
                (
                    "other".into(),
                    "command = [\"/usr/bin/sudo\", \"-n\", \"-u\", \"nobody\", \"/usr/local/sbin/c-deploy\"]\nauth = \"token\"\n".into(),
                    "0644",
                ),
                (
                    "prompt".into(),
                    "command = [\"/usr/bin/sudo\", \"/usr/local/sbin/c-deploy\"]\nauth = \"token\"\n".into(),
                    "0644",
                ),
            ],
            args: "",
            lines: vec![
                format!(
                    "{}: command: sudoers does not let user sockhook run /usr/local/sbin/c-deploy --force as root; add this line with visudo -f /etc/sudoers.d/sockhook: sockhook ALL=(root) NOPASSWD: /usr/local/sbin/c-deploy --force",
                    f("sudo", "args")
                ),
                format!(
                    "{}: command: sudoers does not let user sockhook run /usr/local/sbin/c-deploy as nobody; add this line with visudo -f /etc/sudoers.d/sockhook: sockhook ALL=(nobody) NOPASSWD: /usr/local/sbin/c-deploy \"\"",
                    f("sudo", "other")
                ),
                format!(
                    "{}: command: sudo without -n waits for a password nobody types; add \"-n\" after \"/usr/bin/sudo\"",
                    f("sudo", "prompt")
                ),
            ],
            exit: 1,
        },
        Case {
            name: "owners",
            hooks: vec![
                ("ww".into(), token_hook("/usr/local/bin/c-ww"), "0644"),
                ("alice".into(), token_hook("/usr/local/bin/c-alice"), "0644"),
            ],
            args: "",
            lines: vec![
                format!(
                    "{}: command: /usr/local/bin/c-alice belongs to user c-alice (mode 0755, c-alice:root), who could change what this hook runs; chown root /usr/local/bin/c-alice",
                    f("owners", "alice")
                ),
                format!(
                    "{}: command: /usr/local/bin/c-ww is writable by every user (mode 0777, root:root), who could change what this hook runs; chmod o-w /usr/local/bin/c-ww",
                    f("owners", "ww")
                ),
            ],
            exit: 1,
        },
        Case {
            name: "names",
            hooks: vec![
                ("kodi restart".into(), token_hook("/bin/true"), "0644"),
                ("Kodi".into(), token_hook("/bin/true"), "0644"),
                (long.clone(), token_hook("/bin/true"), "0644"),
            ],
            args: "",
            lines: {
                let rule = "not served: a hook file is NAME.toml (lower-case .toml), NAME 1 to 64 characters of A-Z a-z 0-9 . _ - not starting with a dot; rename it, e.g. to";
                let d = dir("names");
                // In the order of the directory listing, sorted.
                let mut lines = vec![
                    format!("{d}/Kodi.TOML: {rule} Kodi.toml"),
                    format!("{d}/kodi restart.toml: {rule} kodi-restart.toml"),
                    format!("{d}/{long}.toml: {rule} {}.toml", &long[..64]),
                ];
                lines.sort();
                lines
            },
            exit: 1,
        },
        Case {
            name: "closed",
            hooks: vec![("a".into(), token_hook("/bin/true"), "0644")],
            args: "",
            lines: vec![format!(
                "{d}: user sockhook cannot read the hooks directory (mode 0700, root:root); chgrp sockhook {d} && chmod 0750 {d}",
                d = dir("closed")
            )],
            exit: 1,
        },
    ]
}

/// The files the cases refer to, and the one credential drop-in.
fn prepare(sys: &System) {
    sys.script("/usr/local/bin/c-ok", "#!/bin/sh\nexit 0\n");
    sys.script("/usr/local/bin/c-noexec", "#!/bin/sh\nexit 0\n");
    sys.run_ok("chmod 0750 /usr/local/bin/c-noexec");
    sys.script("/usr/local/bin/c-interp", "#!/usr/bin/python9\nprint(1)\n");
    sys.script("/usr/local/sbin/c-deploy", "#!/bin/sh\nexit 0\n");
    sys.script("/usr/local/bin/c-ww", "#!/bin/sh\nexit 0\n");
    sys.run_ok("chmod 0777 /usr/local/bin/c-ww");
    sys.script("/usr/local/bin/c-alice", "#!/bin/sh\nexit 0\n");
    sys.run_ok("useradd --system --no-create-home c-alice && chown c-alice /usr/local/bin/c-alice");
    sys.run_ok(
        "install -m 0600 /dev/null /etc/sockhook/c-root-secret && echo s1 >/etc/sockhook/c-root-secret \
         && install -m 0640 -g sockhook /dev/null /etc/sockhook/c-group-secret && echo s2 >/etc/sockhook/c-group-secret \
         && install -m 0600 /dev/null /etc/sockhook/cred-ok && echo s3 >/etc/sockhook/cred-ok",
    );
    sys.sb.write_file(
        "/etc/systemd/system/sockhook.service.d/check-test.conf",
        "[Service]\nLoadCredential=cred-ok:/etc/sockhook/cred-ok\nLoadCredential=cred-gone:/etc/sockhook/cred-gone\n",
    );
    sys.run_ok("systemctl daemon-reload");
    sys.allow_sudo(&["sockhook ALL=(root) NOPASSWD: /usr/local/sbin/c-deploy \"\""]);
}

fn run_case(sys: &System, case: &Case) -> Vec<String> {
    let d = dir(case.name);
    sys.run_ok(&format!("install -d -m 0755 {d}"));
    for (hook, text, mode) in &case.hooks {
        let ext = if hook == "Kodi" { "TOML" } else { "toml" };
        let path = format!("{d}/{hook}.{ext}");
        sys.sb.write_file(&path, text);
        sys.run_ok(&format!("chmod {mode} {}", q(&path)));
        if *mode == "0640" {
            sys.run_ok(&format!("chgrp sockhook {}", q(&path)));
        }
    }
    if case.name == "closed" {
        sys.run_ok(&format!("chmod 0700 {d}"));
    }
    let out = sys.run(&format!("sockhook check --hooks {d} {}", case.args));
    let text = out.stdout_text();
    let mut failures = Vec::new();
    let mut lines: Vec<&str> = text.lines().collect();
    let summary = lines.pop().unwrap_or("");
    let want_summary = format!(
        "{} hook(s) in {d}, {} problem(s), as user sockhook meets them under {UNIT}",
        case.hooks.len() - usize::from(case.name == "names") * 3,
        if case.exit == 0 {
            0
        } else {
            case.lines.len() - usize::from(case.name == "key")
        }
    );
    if out.status.code() != Some(case.exit) {
        failures.push(format!("exit {:?}, not {}", out.status.code(), case.exit));
    }
    if lines != case.lines.iter().map(String::as_str).collect::<Vec<_>>() {
        failures.push(format!(
            "printed:\n{}\nnot:\n{}",
            lines.join("\n"),
            case.lines.join("\n")
        ));
    }
    if summary != want_summary {
        failures.push(format!("summary {summary:?}, not {want_summary:?}"));
    }
    if !out.stderr.is_empty() {
        failures.push(format!("stderr: {}", String::from_utf8_lossy(&out.stderr)));
    }
    failures
        .into_iter()
        .map(|f| format!("case {}: {f}", case.name))
        .collect()
}

/// The table: every case in one sandbox, each in its own hooks directory;
/// all failures reported together.
#[test]
fn check_as_root_judges_each_file_as_the_service_user() {
    let Some(sys) = System::install() else {
        return;
    };
    prepare(&sys);
    let mut failures = Vec::new();
    for case in cases() {
        failures.extend(run_case(&sys, &case));
    }
    // make install's next steps start with check.
    if !sys
        .install_log
        .contains("Installed. Next:\n  /usr/local/bin/sockhook check\n")
    {
        failures.push(format!("make install printed:\n{}", sys.install_log));
    }
    // The installed set-up as make install leaves it passes.
    let out = sys.run("sockhook check");
    let text = out.stdout_text();
    let want = format!(
        "/hooks/kodi-restart: ok: auth token, POST runs /usr/bin/systemctl restart kodi.service as root (sudo -n)\n\
         1 hook(s) in /etc/sockhook/hooks.d, 0 problem(s), as user sockhook meets them under {UNIT}\n"
    );
    if out.status.code() != Some(0) || text != want {
        failures.push(format!("installed set-up: {:?}\n{text}", out.status.code()));
    }
    // The key the unit loads, missing: the token hook's line is the key's.
    sys.run_ok("mv /etc/sockhook/key /etc/sockhook/key.saved");
    let out = sys.run("sockhook check");
    let text = out.stdout_text();
    let want = format!(
        "/etc/sockhook/key: cannot use the server key: No such file or directory (os error 2); create one, root-only: cd /etc/sockhook && (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' >key)\n\
         1 hook(s) in /etc/sockhook/hooks.d, 1 problem(s), as user sockhook meets them under {UNIT}\n"
    );
    if out.status.code() != Some(1) || !text.ends_with(&want) {
        failures.push(format!("missing key: {:?}\n{text}", out.status.code()));
    }
    sys.run_ok("mv /etc/sockhook/key.saved /etc/sockhook/key");
    // The pasted secret is in no output.
    let all = sys.run(&format!("sockhook check --hooks {} 2>&1", dir("pasted")));
    if all.stdout_text().contains("Secret to Everybody") {
        failures.push("the pasted secret was printed".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `token` as a user who cannot read the key says to run it as root, and
/// suggests no new key; without a key at all it suggests one, created 0600
/// whatever the umask.
#[test]
fn token_without_the_key_says_run_as_root_and_never_to_make_a_new_one() {
    let Some(sys) = System::install() else {
        return;
    };
    let out = sys.run(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups sockhook token /hooks/kodi-restart",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{said}");
    assert_eq!(
        said,
        "sockhook: fatal: /etc/sockhook/key: cannot use the server key: Permission denied (os error 13); it is root-only: run this as root (the service gets a copy through LoadCredential=key:)\n"
    );
    sys.run_ok("mv /etc/sockhook/key /etc/sockhook/key.saved");
    let out = sys.run("sockhook token /hooks/kodi-restart");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let advice = "cd /etc/sockhook && (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' >key)";
    assert_eq!(
        said,
        format!(
            "sockhook: fatal: /etc/sockhook/key: cannot use the server key: No such file or directory (os error 2); create one, root-only: {advice}\n"
        )
    );
    // The advice, followed under a permissive umask, makes a 0600 key.
    sys.run_ok(&format!("umask 000; {advice}"));
    assert_eq!(
        sys.run_ok("stat -c '%a %U %s' /etc/sockhook/key").trim(),
        "600 root 64"
    );
    sys.run_ok("sockhook token /hooks/kodi-restart");
}
