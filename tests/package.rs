//! The Debian package: built by `make deb`, clean for lintian, and installed,
//! used, removed and purged with dpkg under a real systemd (the system-test
//! sandbox), the way an administrator would.
//!
//! The .deb is built by the test (`make deb`, which is quick once `cargo test
//! --release` has built the binary), so that it is never a stale one. Without
//! cargo-deb (or lintian) the tests say `skipped`; under `CI=true` they fail.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::sandbox::{OutputText, Sandbox};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What the hook of the test runs: writes its stdin (the body) to a file.
const BODY_FILE: &str = "/var/lib/sockhook-package-test/body";
/// What the fake kodi.service does when the Kodi example hook restarts it.
const KODI_FILE: &str = "/run/kodi-restarted";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Prints `skipped: why` (straight to stderr: the harness swallows the output
/// of passing tests), or fails under `CI=true`.
fn skip(why: &str) {
    assert!(!ci(), "CI=true, but {why}");
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The package, built once per test run by `make deb`; `Err` says why not.
fn deb() -> Result<&'static Path, String> {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let probe = Command::new(&cargo).args(["deb", "--version"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return Err("cargo-deb is not installed (cargo install cargo-deb --locked)".into());
        }
        let out = Command::new("make")
            .args(["-C", ROOT, "--no-print-directory", "deb"])
            .arg(format!("CARGO={cargo}"))
            .output()
            .map_err(|e| format!("cannot run make: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "make deb failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // cargo deb prints the path of the package it wrote, last.
        let path = stdout
            .lines()
            .rev()
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("make deb printed no .deb path:\n{stdout}"));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("sockhook_{VERSION}-1_")),
            "unexpected package name {name}"
        );
        Ok(path)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

fn deb_or_skip() -> Option<&'static Path> {
    match deb() {
        Ok(path) => Some(path),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// Runs a host command, returns stdout; panics with everything unless it succeeds.
fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The words of a `NAME = …` list in the Makefile (backslash continuations too).
fn make_list(makefile: &str, name: &str) -> Vec<String> {
    let mut lines = makefile.lines().skip_while(|l| {
        l.split_once('=')
            .is_none_or(|(lhs, _)| lhs.trim_end_matches([' ', ':', '?']) != name)
    });
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {name} = in the Makefile"));
    let mut text = first.split_once('=').unwrap().1.to_owned();
    let mut continued = text.ends_with('\\');
    for line in lines {
        if !continued {
            break;
        }
        continued = line.ends_with('\\');
        text.push(' ');
        text.push_str(line);
    }
    let words: Vec<String> = text
        .split_whitespace()
        .filter(|w| *w != "\\")
        .map(str::to_owned)
        .collect();
    assert!(!words.is_empty(), "{name} is empty in the Makefile");
    words
}

#[test]
fn changelog_version_is_the_crate_version() {
    let changelog = fs::read_to_string(format!("{ROOT}/debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("sockhook ({VERSION}-1) ")),
        "debian/changelog starts with {first:?}, but Cargo.toml says version {VERSION} (package revision 1)"
    );
}

#[test]
fn package_holds_exactly_the_expected_files() {
    let Some(deb) = deb_or_skip() else { return };
    let deb = deb.to_str().unwrap();
    let listing = host("dpkg-deb", &["--contents", deb]);
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (fields[0], fields[1], fields[5]);
        assert_eq!(owner, "0/0", "{line}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{line}");
            continue;
        }
        files.insert(format!("{mode} {}", path.trim_start_matches('.')));
    }
    // What `make install` installs (its UNITS, EXAMPLES and doc/*.[1-8]), plus
    // what only a package has.
    let makefile = fs::read_to_string(format!("{ROOT}/Makefile")).unwrap();
    let mut expected: BTreeSet<String> = [
        "-r--r----- /etc/sudoers.d/sockhook",
        "-rwxr-xr-x /usr/bin/sockhook",
        "-rw-r--r-- /usr/lib/sysusers.d/sockhook.conf",
        "-rw-r--r-- /usr/share/doc/sockhook/README.md",
        "-rw-r--r-- /usr/share/doc/sockhook/changelog.Debian.gz",
        "-rw-r--r-- /usr/share/doc/sockhook/copyright",
        "-rw-r--r-- /usr/share/lintian/overrides/sockhook",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for unit in make_list(&makefile, "UNITS") {
        expected.insert(format!("-rw-r--r-- /usr/lib/systemd/system/{unit}"));
    }
    for example in make_list(&makefile, "EXAMPLES") {
        let name = Path::new(&example).file_name().unwrap().to_string_lossy();
        expected.insert(format!(
            "-rw-r--r-- /usr/share/doc/sockhook/examples/{name}"
        ));
    }
    for page in fs::read_dir(format!("{ROOT}/doc")).unwrap() {
        let name = page.unwrap().file_name().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap_or_default();
        if section.len() == 1 && ("1"..="8").contains(&section) {
            expected.insert(format!("-rw-r--r-- /usr/share/man/man{section}/{name}.gz"));
        }
    }
    assert_eq!(files, expected, "dpkg-deb --contents:\n{listing}");

    let conffiles = host("dpkg-deb", &["--info", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/sudoers.d/sockhook");
    // The units as installed: paths substituted, nothing left to substitute.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-contents");
    let _ = fs::remove_dir_all(&tmp);
    host("dpkg-deb", &["--extract", deb, tmp.to_str().unwrap()]);
    let service = fs::read_to_string(tmp.join("usr/lib/systemd/system/sockhook.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/sockhook serve --hooks /etc/sockhook/hooks.d\n")
            && service.contains("LoadCredential=key:/etc/sockhook/key\n"),
        "{service}"
    );
    for unit in fs::read_dir(tmp.join("usr/lib/systemd/system")).unwrap() {
        let unit = unit.unwrap().path();
        let text = fs::read_to_string(&unit).unwrap();
        assert!(
            !text.contains("@bindir@") && !text.contains("@sysconfdir@"),
            "{unit:?}"
        );
    }
    assert_eq!(
        fs::read(tmp.join("etc/sudoers.d/sockhook")).unwrap(),
        fs::read(format!("{ROOT}/sudoers/sockhook")).unwrap()
    );
    let _ = fs::remove_dir_all(&tmp);
}

#[test]
fn lintian_reports_no_errors_or_warnings() {
    let Some(deb) = deb_or_skip() else { return };
    if !have("lintian") {
        return skip("lintian is not installed");
    }
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && !report
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian {}: {}\n{report}{}",
        deb.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bash -c` in the sandbox; returns stdout, panics with everything and the
/// journal of sockhook's units unless it succeeds.
fn ok(sb: &Sandbox, cmd: &str) -> String {
    let out = sb.run(cmd);
    if !out.status.success() {
        panic!(
            "`{cmd}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- journal ---\n{}",
            out.status,
            out.stdout_text(),
            String::from_utf8_lossy(&out.stderr),
            sb.journal("")
                .lines()
                .filter(|l| l.contains("sockhook") || l.contains("kodi"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    out.stdout_text()
}

/// A file or directory exists in the sandbox (symlinks count, even dangling).
fn exists(sb: &Sandbox, path: &str) -> bool {
    fs::symlink_metadata(sb.path(path)).is_ok()
}

/// Waits (bounded) until `journalctl -u sockhook.service` has a line with `text`.
fn wait_for_log(sb: &Sandbox, text: &str) {
    ok(
        sb,
        &format!(
            "timeout 20 sh -c 'until journalctl -q -u sockhook.service | grep -qF \"$0\"; do sleep 0.05; done' '{text}'"
        ),
    );
}

/// Waits (bounded) until `unit` is active: sockhook sends READY=1 as it starts,
/// but systemd may not have read it when the first answer or log line is out.
fn wait_active(sb: &Sandbox, unit: &str) {
    ok(
        sb,
        &format!(
            "timeout 20 sh -c 'until systemctl -q is-active \"$0\"; do sleep 0.05; done' '{unit}'"
        ),
    );
}

/// Sends a request with curl inside the sandbox; panics with sockhook's
/// journal unless the answer has status `expected`.
fn request(sb: &Sandbox, expected: &str, curl_args: &str) {
    let status = ok(
        sb,
        &format!("curl -sS -o /dev/null -w '%{{http_code}}' {curl_args}"),
    );
    assert_eq!(
        status,
        expected,
        "curl {curl_args}\n--- journal ---\n{}",
        sb.journal("sockhook.service")
    );
}

/// The package's files (`dpkg -L`), split into directories and the rest.
fn package_files(sb: &Sandbox) -> (Vec<String>, Vec<String>) {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for path in ok(sb, "dpkg -L sockhook").lines() {
        if path == "/." || path.is_empty() {
            continue;
        }
        if sb.path(path).is_dir() {
            dirs.push(path.to_owned());
        } else {
            files.push(path.to_owned());
        }
    }
    (dirs, files)
}

/// After `dpkg -r` or `-P`: every file of the package is gone but `kept`, and
/// every directory of the package is gone unless another package owns it or
/// something is still in it.
fn assert_gone(sb: &Sandbox, dirs: &[String], files: &[String], kept: &[&str]) {
    for file in files {
        let expected = kept.contains(&file.as_str());
        assert_eq!(
            exists(sb, file),
            expected,
            "{file} should {}exist",
            if expected { "" } else { "no longer " }
        );
    }
    for dir in dirs {
        if !exists(sb, dir) {
            continue;
        }
        let empty = fs::read_dir(sb.path(dir)).unwrap().next().is_none();
        assert!(
            !empty || sb.run(&format!("dpkg-query -S '{dir}'")).status.success(),
            "{dir} is left behind, empty"
        );
    }
}

#[test]
fn package_installs_serves_removes_and_purges_under_systemd() {
    let Some(deb) = deb_or_skip() else { return };
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let deb = deb.display().to_string();

    // A real Debian host: no Docker-style policy-rc.d forbids dpkg to touch
    // services, no path-exclude drops man pages, and there is no earlier
    // sockhook (make install on the host shows here).
    ok(
        &sb,
        "rm -f /usr/sbin/policy-rc.d
         grep -l '^path-exclude' /etc/dpkg/dpkg.cfg.d/* 2>/dev/null | xargs -r rm -f
         if dpkg-query -W sockhook >/dev/null 2>&1; then dpkg -P sockhook; fi
         rm -rf /usr/local/bin/sockhook /usr/local/lib/systemd/system/sockhook* \
             /usr/local/lib/sysusers.d/sockhook.conf /usr/local/share/man/man*/sockhook* \
             /etc/sockhook /etc/sudoers.d/sockhook /run/sockhook
         if getent passwd sockhook >/dev/null; then userdel sockhook; fi
         if getent group sockhook >/dev/null; then groupdel sockhook; fi
         systemctl daemon-reload",
    );

    // Install: user, key, hooks directory; nothing enabled, nothing started.
    let installed = ok(&sb, &format!("dpkg -i '{deb}' 2>&1"));
    assert!(
        installed.contains("created the server key /etc/sockhook/key"),
        "{installed}"
    );
    assert_eq!(
        ok(&sb, "dpkg-query -W -f='${db:Status-Abbrev}' sockhook"),
        "ii "
    );
    let passwd = ok(&sb, "getent passwd sockhook");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[5], "/", "{passwd}");
    assert!(fields[6].ends_with("nologin"), "{passwd}");
    ok(&sb, "getent group sockhook");
    assert_eq!(
        ok(&sb, "stat -c '%a %U %G %s' /etc/sockhook/key").trim(),
        "600 root root 65"
    );
    let key = fs::read_to_string(sb.path("/etc/sockhook/key")).unwrap();
    assert!(
        key.len() == 65
            && key.ends_with('\n')
            && key[..64]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "key is not 32 bytes as hex: {key:?}"
    );
    assert_eq!(
        ok(
            &sb,
            "stat -c '%a %U' /etc/sockhook/hooks.d && ls -A /etc/sockhook/hooks.d"
        )
        .trim(),
        "755 root"
    );
    assert_eq!(
        ok(&sb, "stat -c '%a %U %G' /etc/sudoers.d/sockhook").trim(),
        "440 root root"
    );
    ok(&sb, "visudo -c");
    for unit in ["sockhook.socket", "sockhook-accept.socket"] {
        let state = sb
            .run(&format!("systemctl is-enabled {unit}"))
            .stdout_text();
        assert_eq!(state.trim(), "disabled", "{unit}");
    }
    let active = sb
        .run("systemctl is-active sockhook.socket sockhook-accept.socket sockhook.service")
        .stdout_text();
    assert_eq!(active, "inactive\ninactive\ninactive\n");
    assert_eq!(
        ok(
            &sb,
            "systemctl show -P ExecMainStartTimestampMonotonic sockhook.service"
        )
        .trim(),
        "0",
        "postinst started sockhook.service"
    );
    assert_eq!(ok(&sb, "ss -Hltn 'sport = :7777'"), "");
    if !sb.run("command -v man").status.success() {
        skip("man is not installed: the man pages and Documentation=man: are not checked");
    } else {
        assert_eq!(
            ok(&sb, "man -w sockhook sockhook.toml"),
            "/usr/share/man/man8/sockhook.8.gz\n/usr/share/man/man5/sockhook.toml.5.gz\n"
        );
        // Also finds Documentation=man:sockhook(8) through man.
        let verify = sb.run("systemd-analyze verify sockhook.socket sockhook.service");
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    // The administrator's part: hooks (one copied from the examples, as the
    // README says), then the socket.
    ok(
        &sb,
        &format!(
            "install -d -o sockhook -g sockhook {dir}
             cp /usr/share/doc/sockhook/examples/kodi-restart.toml /etc/sockhook/hooks.d/
             printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/touch {KODI_FILE}\\n' \
                 >/etc/systemd/system/kodi.service
             systemctl daemon-reload",
            dir = Path::new(BODY_FILE).parent().unwrap().display()
        ),
    );
    sb.write_file(
        "/etc/sockhook/hooks.d/package-test.toml",
        format!("command = [\"/usr/bin/tee\", \"{BODY_FILE}\"]\nauth = \"token\"\n"),
    );
    // Keeps the service busy while dpkg -r stops it.
    sb.write_file(
        "/etc/sockhook/hooks.d/slow.toml",
        "command = [\"/usr/bin/sleep\", \"3\"]\nauth = \"token\"\n",
    );
    let check = ok(&sb, "sockhook check");
    assert!(
        check.contains("3 hook(s) in /etc/sockhook/hooks.d, 0 problem(s)"),
        "{check}"
    );
    ok(&sb, "systemctl enable --now sockhook.socket");
    assert_eq!(
        ok(&sb, "systemctl is-active sockhook.socket").trim(),
        "active"
    );
    assert_eq!(
        ok(&sb, "systemctl is-enabled sockhook.socket").trim(),
        "enabled"
    );

    // A request with the token as Basic-auth user name runs the hook.
    let token = ok(&sb, "sockhook token /hooks/package-test");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    request(
        &sb,
        "204",
        &format!(
            "-u '{token}:' --data-binary 'hello from dpkg' \
             http://127.0.0.1:7777/hooks/package-test"
        ),
    );
    wait_for_log(&sb, "hook package-test: run");
    wait_for_log(&sb, "exited 0");
    assert_eq!(
        fs::read_to_string(sb.path(BODY_FILE)).unwrap(),
        "hello from dpkg"
    );
    // The wrong token runs nothing.
    request(
        &sb,
        "401",
        "-H 'Authorization: Bearer 00' -d x http://127.0.0.1:7777/hooks/package-test",
    );
    // The shipped example and the shipped sudoers line: Kodi restarts, as root
    // through sudo from inside the service's sandbox.
    let kodi = ok(&sb, "sockhook token /hooks/kodi-restart");
    // It answers after the run (respond = "after-run"): 200 once Kodi restarted.
    request(
        &sb,
        "200",
        &format!(
            "-H 'Authorization: Bearer {}' -d '' http://127.0.0.1:7777/hooks/kodi-restart",
            kodi.trim()
        ),
    );
    wait_for_log(&sb, "hook kodi-restart: run");
    ok(
        &sb,
        &format!("timeout 20 sh -c 'until [ -e {KODI_FILE} ]; do sleep 0.05; done'"),
    );
    let log = sb.journal("sockhook.service");
    assert!(
        !log.contains("no new privileges") && !log.contains("password is required"),
        "{log}"
    );

    // An upgrade (the same version again) changes nothing that runs: the
    // socket stays enabled and listening, the service is not started.
    ok(&sb, "systemctl stop sockhook.service");
    let started = "systemctl show -P ExecMainStartTimestampMonotonic sockhook.service";
    let last_start = ok(&sb, started);
    ok(&sb, &format!("dpkg -i '{deb}'"));
    assert_eq!(
        ok(&sb, started),
        last_start,
        "the upgrade started sockhook.service"
    );
    assert_eq!(
        ok(&sb, "systemctl list-jobs --no-legend"),
        "",
        "the upgrade queued a job"
    );
    assert_eq!(
        ok(&sb, "systemctl is-active sockhook.socket").trim(),
        "active"
    );
    assert_eq!(
        ok(&sb, "systemctl is-enabled sockhook.socket").trim(),
        "enabled"
    );
    assert_eq!(
        sb.run("systemctl is-active sockhook.service")
            .stdout_text()
            .trim(),
        "inactive",
        "the upgrade started sockhook.service"
    );
    assert_eq!(
        fs::read_to_string(sb.path("/etc/sockhook/key")).unwrap(),
        key,
        "the upgrade replaced the key"
    );

    // Remove: units stopped, everything gone but the conffile and the
    // configuration (key, hooks), and the user.
    let (dirs, files) = package_files(&sb);
    assert!(files.contains(&"/usr/bin/sockhook".to_owned()), "{files:?}");
    // With a command running, so that there is a service to stop.
    request(
        &sb,
        "204",
        "-u \"$(sockhook token /hooks/slow):\" -d '' http://127.0.0.1:7777/hooks/slow",
    );
    wait_for_log(&sb, "hook slow: run");
    wait_active(&sb, "sockhook.service");
    ok(&sb, "dpkg -r sockhook");
    // Read once, on purpose: prerm's `systemctl stop` waits for every unit it
    // names, so nothing may still be deactivating when dpkg -r returns.
    // "failed" too: sockhook exits 1 when a run of this activation ended
    // badly, and a run killed by the stop counts.
    let active = sb
        .run("systemctl is-active sockhook.socket sockhook.service")
        .stdout_text();
    assert!(
        matches!(
            active.as_str(),
            "inactive\ninactive\n" | "inactive\nfailed\n"
        ),
        "after dpkg -r: {active}\n{}",
        sb.journal("sockhook.service")
    );
    assert_eq!(ok(&sb, "ss -Hltn 'sport = :7777'"), "");
    assert_eq!(
        sb.run("pgrep -u sockhook").stdout_text(),
        "",
        "processes of user sockhook survived dpkg -r"
    );
    assert_eq!(
        ok(&sb, "dpkg-query -W -f='${db:Status-Abbrev}' sockhook"),
        "rc "
    );
    assert_gone(&sb, &dirs, &files, &["/etc/sudoers.d/sockhook"]);
    assert!(!exists(&sb, "/run/sockhook"), "/run/sockhook left behind");
    for kept in [
        "/etc/sockhook/key",
        "/etc/sockhook/hooks.d/package-test.toml",
    ] {
        assert!(exists(&sb, kept), "dpkg -r removed {kept}");
    }
    ok(&sb, "getent passwd sockhook");

    // Purge: the conffile, the key and the runtime state go; the hooks the
    // administrator wrote stay, and so does the system user (Debian policy).
    let purged = ok(&sb, "dpkg -P sockhook 2>&1");
    assert!(
        purged.contains("kept /etc/sockhook") && purged.contains("package-test.toml"),
        "{purged}"
    );
    assert!(
        !sb.run("dpkg-query -W sockhook").status.success(),
        "dpkg still knows sockhook"
    );
    assert_gone(&sb, &dirs, &files, &[]);
    assert!(!exists(&sb, "/etc/sockhook/key"), "purge kept the key");
    assert_eq!(
        ok(&sb, "find /etc/sockhook | sort"),
        "/etc/sockhook\n/etc/sockhook/hooks.d\n/etc/sockhook/hooks.d/kodi-restart.toml\n\
         /etc/sockhook/hooks.d/package-test.toml\n/etc/sockhook/hooks.d/slow.toml\n"
    );
    assert_eq!(
        ok(
            &sb,
            "find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
             /var/lib/systemd/deb-systemd-helper-masked -name '*sockhook*' 2>/dev/null || true"
        ),
        "",
        "enablement or masks left behind"
    );
    assert_eq!(ok(&sb, "getent passwd sockhook"), passwd);

    // Installing again reuses the user and makes a new key; purging with no
    // hooks of the administrator's leaves nothing in /etc.
    ok(&sb, &format!("dpkg -i '{deb}'"));
    assert_eq!(ok(&sb, "getent passwd sockhook"), passwd);
    let new_key = fs::read_to_string(sb.path("/etc/sockhook/key")).unwrap();
    assert!(new_key.len() == 65 && new_key != key, "no new key");
    ok(&sb, "rm /etc/sockhook/hooks.d/*.toml && dpkg -P sockhook");
    assert!(!exists(&sb, "/etc/sockhook"), "purge left /etc/sockhook");
    assert!(!exists(&sb, "/etc/sudoers.d/sockhook"));
}
