//! A real systemd with sockhook installed by `make install`, and the ways the
//! system tests talk to it: curl from inside, unit states by bounded polls,
//! the journal on failure. Shared by tests/system.rs and tests/hardening.rs.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use super::sandbox::{OutputText, Sandbox};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const BIN: &str = env!("CARGO_BIN_EXE_sockhook");
pub const URL: &str = "http://127.0.0.1:7777";
/// Where the test hooks leave their traces; owned by user sockhook.
pub const STATE: &str = "/var/lib/sockhook-test";
pub const HOOKS: &str = "/etc/sockhook/hooks.d";
pub const SUDOERS: &str = "/etc/sudoers.d/sockhook";
/// sockhook's idle timeout under systemd (`--idle-timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the waits for something that must happen: reached only when it does not.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A booted sandbox with sockhook installed. Prints the journal if the test panics.
pub struct System {
    pub sb: Sandbox,
    /// What `make install` printed.
    pub install_log: String,
}

impl System {
    /// Boots, installs, and prepares `STATE`; `None` when the sandbox is skipped.
    pub fn install() -> Option<System> {
        let sb = Sandbox::boot_or_skip()?;
        let install_log = sb.run_ok(&format!("make -C {REPO} install BIN={BIN} 2>&1"));
        sb.run_ok(&format!(
            "install -d -o sockhook -g sockhook -m 0755 {STATE}"
        ));
        Some(System { sb, install_log })
    }

    pub fn run(&self, cmd: &str) -> std::process::Output {
        self.sb.run(cmd)
    }

    pub fn run_ok(&self, cmd: &str) -> String {
        self.sb.run_ok(cmd)
    }

    /// Writes `/etc/sockhook/hooks.d/NAME.toml`.
    pub fn hook(&self, name: &str, toml: &str) {
        self.sb.write_file(&format!("{HOOKS}/{name}.toml"), toml);
    }

    /// Writes an executable script.
    pub fn script(&self, path: &str, body: &str) {
        self.sb.write_file(path, body);
        self.run_ok(&format!("chmod 0755 {path}"));
    }

    /// Adds sudoers lines the way an administrator should: a copy, checked by
    /// `visudo -cf`, then renamed over the drop-in (the copy's dotted name is one that
    /// sudo ignores while it exists).
    pub fn allow_sudo(&self, lines: &[&str]) {
        let mut cmd = format!("set -e; tmp={SUDOERS}.new; cp -p {SUDOERS} \"$tmp\"; ");
        for line in lines {
            cmd.push_str(&format!("printf '%s\\n' {} >>\"$tmp\"; ", q(line)));
        }
        cmd.push_str(&format!(
            "visudo -cf \"$tmp\"; chmod 0440 \"$tmp\"; mv -f \"$tmp\" {SUDOERS}; visudo -c"
        ));
        self.run_ok(&cmd);
    }

    pub fn start_socket(&self) {
        self.run_ok("systemctl start sockhook.socket");
        self.assert_listening("sockhook.socket");
    }

    pub fn token(&self, path: &str) -> String {
        self.run_ok(&format!("sockhook token {path}"))
            .trim()
            .to_string()
    }

    /// A POST with a token, from inside; returns the status (`000` when curl failed).
    pub fn post(&self, hook: &str, token: &str, body: &str) -> String {
        self.curl(&format!(
            "-u {} --data-binary {} {URL}/hooks/{hook}",
            q(&format!("{token}:")),
            q(body)
        ))
    }

    /// curl ARGS from inside; returns the status code it printed (`000` when
    /// curl got none within its `--max-time`, a bound for failures only).
    pub fn curl(&self, args: &str) -> String {
        let out = self.run(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 {args}"
        ));
        out.stdout_text().trim().to_string()
    }

    /// `journalctl -u UNIT -o cat`, this boot.
    pub fn log(&self, unit: &str) -> String {
        self.run(&format!("journalctl -b --no-pager -o cat -u {unit}"))
            .stdout_text()
    }

    pub fn is_active(&self, unit: &str) -> String {
        self.run(&format!("systemctl is-active {unit}"))
            .stdout_text()
            .trim()
            .to_string()
    }

    /// `systemctl show -p ActiveState,SubState UNIT` as (active, sub).
    pub fn state(&self, unit: &str) -> (String, String) {
        let out = self.run_ok(&format!("systemctl show -p ActiveState,SubState {unit}"));
        let get = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or("?")
                .to_string()
        };
        (get("ActiveState="), get("SubState="))
    }

    /// The socket unit is healthy: `active`, and `listening` or, while the service it
    /// triggered holds the listening socket (`Accept=no`), `running`.
    pub fn assert_listening(&self, unit: &str) {
        let (active, sub) = self.state(unit);
        assert!(
            active == "active" && (sub == "listening" || sub == "running"),
            "{unit} is {active}/{sub}, not active/listening"
        );
    }

    /// Waits until sockhook.service has exited (idle) and the socket is back to
    /// `active`/`listening`; fails at once if the socket leaves `active`.
    pub fn wait_listening(&self, unit: &str) -> (String, String) {
        self.wait(
            &format!("{unit} to be active/listening again"),
            IDLE_TIMEOUT * 4,
            || {
                let (active, sub) = self.state(unit);
                assert_eq!(active, "active", "{unit} is {active}/{sub}");
                (sub == "listening").then_some((active, sub))
            },
        )
    }

    /// Waits until `unit` is `want` (`ActiveState`); a unit passes through
    /// `activating` and `deactivating`, so one look right after a request or a
    /// stop can see either. Fails at once on `failed` unless that is `want`.
    pub fn wait_state(&self, unit: &str, want: &str) -> (String, String) {
        self.wait(&format!("{unit} to be {want}"), IDLE_TIMEOUT * 4, || {
            let (active, sub) = self.state(unit);
            assert!(
                active != "failed" || want == "failed",
                "{unit} is {active}/{sub}, waiting for {want}"
            );
            (active == want).then_some((active, sub))
        })
    }

    /// Waits until `unit` has stopped: `inactive`, or `failed` when its process
    /// exited non-zero (not `deactivating`, while systemd may still be killing
    /// what is left in its cgroup); returns that state.
    pub fn wait_stopped(&self, unit: &str) -> String {
        self.wait(&format!("{unit} to stop"), IDLE_TIMEOUT * 4, || {
            let (active, _) = self.state(unit);
            matches!(active.as_str(), "inactive" | "failed").then_some(active)
        })
    }

    /// How many times systemd started sockhook.service in this boot: its "Started" lines,
    /// cross-checked against the distinct invocation IDs of sockhook's own log lines.
    /// `journalctl --sync` first: journald may not have written either kind yet.
    pub fn starts(&self) -> usize {
        self.run_ok("journalctl --sync");
        let started = self
            .log("sockhook.service")
            .lines()
            .filter(|l| l.starts_with("Started sockhook.service"))
            .count();
        let invocations = self.run_ok(
            "journalctl -b --no-pager -o export -u sockhook.service _COMM=sockhook \
             | sed -n 's/^_SYSTEMD_INVOCATION_ID=//p' | sort -u | wc -l",
        );
        let invocations: usize = invocations.trim().parse().unwrap();
        assert_eq!(
            started, invocations,
            "\"Started\" lines and sockhook invocation IDs disagree"
        );
        started
    }

    /// Polls `probe` every 50 ms until it yields a value; panics after `limit`.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the journal of sockhook.service has a line containing every part.
    pub fn wait_log(&self, parts: &[&str], limit: Duration) -> String {
        self.wait(&format!("a log line with {parts:?}"), limit, || {
            self.log("sockhook.service")
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string)
        })
    }

    pub fn read(&self, inside: &str) -> Option<String> {
        fs::read_to_string(self.sb.path(inside)).ok()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- journal of sockhook.service ---\n{}",
                self.sb.journal("sockhook.service")
            );
            let accept = self.sb.journal("sockhook-accept@*.service");
            if accept.lines().count() > 1 {
                eprintln!("--- journal of sockhook-accept@*.service ---\n{accept}");
            }
            eprintln!(
                "--- sockhook sockets ---\n{}",
                self.run("systemctl status --no-pager --full 'sockhook*.socket' 2>&1")
                    .stdout_text()
            );
        }
    }
}

/// Single-quotes `s` for bash.
pub fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A hook that appends its body (one line) to `STATE/NAME.log`, with shell builtins
/// only so that a run takes about a millisecond.
pub fn recorder(name: &str) -> String {
    format!(
        "command = [\"/bin/sh\", \"-c\", \"IFS= read -r line; printf '%s\\\\n' \\\"$line\\\" >>{STATE}/{name}.log\"]\n\
         auth = \"token\"\n"
    )
}
