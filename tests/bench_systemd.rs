//! `make bench-systemd`: what a cold activation costs under a real systemd (issue 17).
//!
//! In one system-test sandbox (`support/sandbox.rs`), after `make install`: the first
//! request after idle through the shipped `sockhook.socket` + `sockhook.service`; the
//! floor (`bench/floor/floor.c`) as a service with the very same unit options; the same
//! sockhook unit without its sandboxing options, and with none of its options; and the
//! shipped unit with each of its options removed in turn by a drop-in. Activations take
//! turns, round by round, so the machine's noise falls on all alike; before each one the
//! service must be `inactive` and its socket `listening` again (bounded polls). Writes
//! `bench/results/systemd.md` and `.json`.
//!
//! `#[ignore]`: `make test` never runs it; `make bench-systemd` does, as root, with
//! `cargo test --release --test bench_systemd -- --ignored --nocapture`.
//! `BENCH_SYSTEMD_ACTIVATIONS` sets the activations per variant (default 31, at least 15).

mod support;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::sandbox::{OutputText, Sandbox};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_sockhook");
const DEFAULT_ACTIVATIONS: usize = 31;
const MIN_ACTIVATIONS: usize = 15;
/// sockhook's and the floor's --idle-timeout here: an activation's cost does not depend on
/// it, and the shipped 5 s would make the run take 15 variants × 31 × 5 s.
const IDLE_TIMEOUT: &str = "0.1";
/// Longest wait for a service to be inactive and its socket listening again.
const IDLE_WAIT: Duration = Duration::from_secs(20);
/// Longest time the whole benchmark may take once the sandbox is up.
const TOTAL_LIMIT: Duration = Duration::from_secs(1200);
const SECRET_FILE: &str = "/etc/sockhook/bench-secret";
const FLOOR_INSIDE: &str = "/usr/local/bin/sockhook-floor";
const UNITS: &str = "/etc/systemd/system";
const FIRST_PORT: u16 = 7801;

/// What an option of sockhook.service is, for the variants that remove several at once.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Confinement that needs a namespace of the service's own (mount or IPC): removing
    /// one of them leaves the namespace as long as another needs it.
    Namespace,
    /// Confinement without a namespace.
    Confines,
    /// What sockhook needs to work as designed, not confinement.
    Function,
}
use Kind::{Confines, Function, Namespace};

/// How to take one [Service] option of sockhook.service away with a drop-in, and what it
/// is ("without sandboxing" drops Namespace and Confines; "without namespaces" Namespace).
/// `systemctl show` must then report the same value as for a unit without the option.
const REMOVALS: &[(&str, &[&str], Kind)] = &[
    // "~" alone: all capabilities but none, the default bounding set.
    (
        "CapabilityBoundingSet",
        &["CapabilityBoundingSet=~"],
        Confines,
    ),
    ("Delegate", &["Delegate=no"], Function),
    // Its placeholders (SetCredential=) go too, or they would become the credentials.
    (
        "LoadCredential",
        &["LoadCredential=", "SetCredential="],
        Function,
    ),
    // The systemd default (soft 1024, hard 524288), which `serve` raises itself.
    ("LimitNOFILE", &["LimitNOFILE=1024:524288"], Function),
    ("PrivateIPC", &["PrivateIPC=no"], Namespace),
    ("PrivateTmp", &["PrivateTmp=no"], Namespace),
    ("ProtectHome", &["ProtectHome=no"], Namespace),
    ("ProtectProc", &["ProtectProc=default"], Namespace),
    ("ProtectSystem", &["ProtectSystem=no"], Namespace),
    ("RemoveIPC", &["RemoveIPC=no"], Confines),
    ("RuntimeDirectory", &["RuntimeDirectory="], Function),
    (
        "RuntimeDirectoryPreserve",
        &["RuntimeDirectoryPreserve=no"],
        Function,
    ),
    // Not alone: without its placeholders a missing tls.crt fails every start
    // (243/CREDENTIALS); it goes with LoadCredential's removal above.
    ("SetCredential", &[], Function),
    // Without it no delivery journal: what opening the journal costs an activation.
    ("StateDirectory", &["StateDirectory="], Function),
    ("StateDirectoryMode", &["StateDirectoryMode=0755"], Function),
];
/// [Service] keys that are not options to remove: what runs, how, and as whom.
const KEPT: &[&str] = &["ExecStart", "Type", "User", "Group"];

struct Variant {
    /// Unit name without suffix.
    unit: String,
    label: String,
    port: u16,
    latencies_ms: Vec<f64>,
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The [Service] options of a unit file, in order: (key, whole line).
fn service_options(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut options = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.is_empty()
            && !line.starts_with('#')
            && let Some((key, _)) = line.split_once('=')
        {
            options.push((key.trim().to_string(), line.to_string()));
        }
    }
    options
}

fn exec_start(options: &[(String, String)]) -> String {
    options
        .iter()
        .find(|(k, _)| k == "ExecStart")
        .map(|(_, line)| line["ExecStart=".len()..].to_string())
        .expect("sockhook.service has no ExecStart=")
}

/// Builds the floor on the host: static, against OpenSSL's libcrypto.a, as bench.py does.
fn build_floor() -> Vec<u8> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-systemd-floor");
    let done = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-static", "-s", "-o"])
        .arg(&out)
        .arg(format!("{REPO}/bench/floor/floor.c"))
        .arg("-lcrypto")
        .output()
        .expect("cc (Debian: gcc, libssl-dev)");
    assert!(
        done.status.success(),
        "building the floor failed (apt-get install gcc libssl-dev):\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    fs::read(&out).expect("the floor binary")
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A distribution-free 95 % confidence interval of the median: the order statistics of
/// ranks n/2 ∓ 0.98·√n (normal approximation of the binomial), clamped to the sample.
fn median_interval(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len() as f64;
    let half = 0.98 * n.sqrt();
    let lo = (n / 2.0 - half).floor().max(1.0) as usize;
    let hi = ((1.0 + n / 2.0 + half).ceil() as usize).min(sorted.len());
    (sorted[lo - 1], sorted[hi - 1])
}

/// Nearest-rank percentile, as bench.py's.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.max(1) - 1]
}

struct Bench {
    sb: Sandbox,
    signature: String,
}

impl Bench {
    fn run_ok(&self, cmd: &str) -> String {
        self.sb.run_ok(cmd)
    }

    /// Writes unit `name` (a copy of `text`, or nothing when None) and its bench drop-in.
    fn write_units(
        &self,
        name: &str,
        socket: Option<String>,
        service: Option<String>,
        dropin: &str,
    ) {
        if let Some(socket) = socket {
            self.sb
                .write_file(&format!("{UNITS}/{name}.socket"), socket);
        }
        if let Some(service) = service {
            self.sb
                .write_file(&format!("{UNITS}/{name}.service"), service);
        }
        self.sb
            .write_file(&format!("{UNITS}/{name}.service.d/bench.conf"), dropin);
    }

    /// One activation: waits until `unit`.service is inactive and its socket listening,
    /// then sends one signed 0-byte GitHub delivery; curl's time_total in ms.
    fn activate(&self, v: &Variant) -> f64 {
        let wait = format!(
            "for i in $(seq 2000); do \
               s=$(systemctl show -p ActiveState --value {u}.service); \
               l=$(systemctl show -p SubState --value {u}.socket); \
               [ \"$s\" = inactive ] && [ \"$l\" = listening ] && break; \
               [ \"$s\" = failed ] && {{ echo \"{u}.service failed\" >&2; exit 4; }}; \
               sleep 0.005; \
             done; \
             [ \"$s\" = inactive ] && [ \"$l\" = listening ] || \
               {{ echo \"{u}: service $s, socket $l\" >&2; exit 3; }}",
            u = v.unit
        );
        let curl = format!(
            "curl -sS -o /dev/null -w '%{{http_code}} %{{time_total}}' --max-time 10 \
             -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
             -H 'X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958' -H {sig} -H 'Expect:' \
             --data-binary '' http://127.0.0.1:{port}/hooks/bench",
            sig = q(&self.signature),
            port = v.port
        );
        let out = self.sb.run_timeout(
            &format!("{wait} && {curl}"),
            IDLE_WAIT + Duration::from_secs(15),
        );
        let text = out.stdout_text();
        let mut fields = text.split_whitespace();
        let (status, seconds) = (fields.next(), fields.next());
        if !out.status.success() || status != Some("204") {
            let status = self.sb.run_timeout(
                &format!(
                    "systemctl status --no-pager {u}.socket {u}.service; journalctl --no-pager -n 30",
                    u = v.unit
                ),
                Duration::from_secs(15),
            );
            panic!(
                "{}: activation failed ({}): {text}\n{}\n--- journal ---\n{}\n--- status ---\n{}",
                v.label,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.sb.journal(&format!("{}.service", v.unit)),
                status.stdout_text()
            );
        }
        seconds
            .and_then(|s| s.parse::<f64>().ok())
            .expect("curl's time_total")
            * 1e3
    }
}

#[test]
#[ignore = "a benchmark: run with `make bench-systemd` (root, about 3 minutes)"]
fn cold_activation_under_systemd() {
    let activations = std::env::var("BENCH_SYSTEMD_ACTIVATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ACTIVATIONS)
        .max(MIN_ACTIVATIONS);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let floor = build_floor();
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let started = Instant::now();
    sb.run_ok(&format!("make -C {REPO} install BIN={BIN} 2>&1"));
    sb.write_file(SECRET_FILE, "bench-secret-not-a-real-one-0123456789");
    sb.run_ok(&format!(
        "chown root:sockhook {SECRET_FILE} && chmod 0640 {SECRET_FILE}"
    ));
    sb.write_file(
        "/etc/sockhook/hooks.d/bench.toml",
        format!("command = [\"/bin/true\"]\nauth = \"github\"\nsecret = \"{SECRET_FILE}\"\n"),
    );
    sb.write_file(FLOOR_INSIDE, &floor);
    sb.run_ok(&format!("chmod 0755 {FLOOR_INSIDE}"));
    let signature = sb
        .run_ok(&format!(
            "sockhook sign --scheme github --secret {SECRET_FILE} </dev/null"
        ))
        .trim()
        .to_string();
    let bench = Bench { sb, signature };

    let service_path = bench.run_ok("systemctl show -p FragmentPath --value sockhook.service");
    let socket_path = bench.run_ok("systemctl show -p FragmentPath --value sockhook.socket");
    let service = bench.run_ok(&format!("cat {}", service_path.trim()));
    let socket = bench.run_ok(&format!("cat {}", socket_path.trim()));
    assert!(
        socket.contains("ListenStream=7777\n"),
        "sockhook.socket: {socket}"
    );
    let options = service_options(&service);
    let sockhook_cmd = exec_start(&options);
    // Each key once, though the unit may set it on several lines (LoadCredential=).
    let mut removable: Vec<&str> = Vec::new();
    for (key, _) in &options {
        if !KEPT.contains(&key.as_str()) && !removable.contains(&key.as_str()) {
            removable.push(key);
        }
    }
    for key in &removable {
        assert!(
            REMOVALS.iter().any(|(k, _, _)| k == key),
            "sockhook.service has an option this benchmark cannot remove: {key}; \
             add it to REMOVALS in tests/bench_systemd.rs"
        );
    }
    let removal = |key: &str| REMOVALS.iter().find(|(k, _, _)| *k == key).unwrap();
    // Every variant: the same idle timeout, and no start limit (with starts every 0.2 s
    // the shipped 20 per 60 s would fail the socket). Neither changes an activation.
    let dropin = |cmd: &str, lines: &[&str]| {
        let mut d = format!(
            "# bench-systemd\n[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nExecStart=\nExecStart={cmd} --idle-timeout {IDLE_TIMEOUT}\n"
        );
        for line in lines {
            d.push_str(line);
            d.push('\n');
        }
        d
    };
    let copy = |name: &str, port: u16, cmd: Option<&str>| {
        let socket = socket.replace("ListenStream=7777\n", &format!("ListenStream={port}\n"));
        let mut service = service.replace("sockhook.socket", &format!("{name}.socket"));
        if let Some(cmd) = cmd {
            service = service.replace(
                &format!("ExecStart={sockhook_cmd}"),
                &format!("ExecStart={cmd}"),
            );
        }
        (socket, service)
    };

    let mut variants = Vec::new();
    let mut add = |unit: &str, label: String, port: u16| {
        variants.push(Variant {
            unit: unit.to_string(),
            label,
            port,
            latencies_ms: Vec::new(),
        })
    };
    bench.write_units("sockhook", None, None, &dropin(&sockhook_cmd, &[]));
    add("sockhook", "sockhook, shipped units".into(), 7777);
    let floor_cmd = format!("{FLOOR_INSIDE} --secret {SECRET_FILE}");
    let mut port = FIRST_PORT;
    let (s, v) = copy("bench-floor", port, Some(&floor_cmd));
    bench.write_units("bench-floor", Some(s), Some(v), &dropin(&floor_cmd, &[]));
    add("bench-floor", "floor, the same unit options".into(), port);
    let of_kind = |kinds: &[Kind]| -> Vec<&str> {
        removable
            .iter()
            .copied()
            .filter(|k| kinds.contains(&removal(k).2))
            .collect()
    };
    let confining = of_kind(&[Namespace, Confines]);
    let namespaced = of_kind(&[Namespace]);
    for (unit, label, keys) in [
        (
            "bench-nosandbox",
            format!("sockhook without sandboxing ({})", confining.join(", ")),
            confining.clone(),
        ),
        (
            "bench-nonamespace",
            format!(
                "sockhook without the options that need a namespace ({})",
                namespaced.join(", ")
            ),
            namespaced.clone(),
        ),
        (
            "bench-bare",
            format!("sockhook without any option but {}", KEPT.join(", ")),
            removable.clone(),
        ),
    ] {
        port += 1;
        let lines: Vec<&str> = keys
            .iter()
            .flat_map(|k| removal(k).1.iter().copied())
            .collect();
        let (s, v) = copy(unit, port, None);
        bench.write_units(unit, Some(s), Some(v), &dropin(&sockhook_cmd, &lines));
        add(unit, label, port);
    }
    // A key with no lines of its own goes with another's removal.
    removable.retain(|key| !removal(key).1.is_empty());
    for key in &removable {
        port += 1;
        let unit = format!("bench-no-{}", key.to_lowercase());
        let (s, v) = copy(&unit, port, None);
        bench.write_units(
            &unit,
            Some(s),
            Some(v),
            &dropin(&sockhook_cmd, removal(key).1),
        );
        add(&unit, format!("sockhook without {key}"), port);
    }
    // A reference unit with none of the options: a removal must leave what it shows.
    bench.sb.write_file(
        &format!("{UNITS}/bench-reference.service"),
        "[Service]\nExecStart=/bin/true\n",
    );
    bench.run_ok("systemctl daemon-reload");
    for key in &removable {
        let shown = |unit: &str| bench.run_ok(&format!("systemctl show -p {key} {unit}"));
        let unit = format!("bench-no-{}.service", key.to_lowercase());
        if shown(&unit).contains("[unprintable]") {
            // systemctl 252 cannot print LoadCredential=; an empty assignment resets the
            // list (systemd.exec(5)), and the journal of that variant says the key is missing.
            println!("bench-systemd: {key}: systemctl cannot show it; removal not cross-checked");
            continue;
        }
        assert_eq!(
            shown(&unit),
            shown("bench-reference.service"),
            "the drop-in {:?} does not remove {key}",
            removal(key).1
        );
        assert_ne!(
            shown("sockhook.service"),
            shown(&unit),
            "{key} is not set in sockhook.service"
        );
    }
    let sockets: Vec<String> = variants
        .iter()
        .map(|v| format!("{}.socket", v.unit))
        .collect();
    bench.run_ok(&format!("systemctl start {}", sockets.join(" ")));

    // One unmeasured activation each (page cache, first exec), then round after round.
    for v in &variants {
        bench.activate(v);
    }
    for round in 0..activations {
        assert!(
            started.elapsed() < TOTAL_LIMIT,
            "bench-systemd: over {TOTAL_LIMIT:?} after {round} rounds"
        );
        for v in variants.iter_mut() {
            let ms = bench.activate(v);
            v.latencies_ms.push(ms);
        }
    }
    for v in &variants {
        let active = bench.run_ok(&format!("systemctl is-active {}.socket", v.unit));
        assert_eq!(active.trim(), "active", "{}.socket after the run", v.unit);
    }
    let versions = bench.run_ok("systemctl --version | head -n 1");
    write_results(
        &variants,
        activations,
        load.trim(),
        versions.trim(),
        started.elapsed(),
    );
}

fn write_results(
    variants: &[Variant],
    activations: usize,
    load: &str,
    systemd: &str,
    took: Duration,
) {
    let stats: Vec<(f64, f64, f64, Vec<f64>)> = variants
        .iter()
        .map(|v| {
            let mut sorted = v.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            (median(&sorted), percentile(&sorted, 0.9), sorted[0], sorted)
        })
        .collect();
    let intervals: Vec<(f64, f64)> = stats.iter().map(|s| median_interval(&s.3)).collect();
    let (shipped_lo, shipped_hi) = intervals[0];
    let shipped = stats[0].0;
    let floor = stats[1].0;
    let date = Command::new("date")
        .arg("+%Y-%m-%d %H:%M")
        .output()
        .map(|o| o.stdout_text().trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# sockhook under a real systemd: the first request after idle, {date}\n"
    );
    let _ = writeln!(
        md,
        "{systemd}, in the system-test sandbox; host load {load} at the start. Produced by \
         `make bench-systemd` in {:.0} s: {activations} activations per variant (after one \
         unmeasured), taking turns round by round; before each the service is `inactive` and \
         its socket `listening` again. Latency = curl's `time_total` from inside the sandbox \
         for a signed 0-byte GitHub delivery (204): systemd's start of the service, the unit's \
         set-up, the responder's start and its answer. Every variant runs with \
         `--idle-timeout {IDLE_TIMEOUT}` and `StartLimitIntervalSec=0` (drop-in `bench.conf`), \
         which change nothing in an activation. \"Δ\" is the variant's median minus the \
         shipped unit's: for \"without X\", what X costs per activation. The 95 % interval \
         of each median is distribution-free (order statistics); a Δ whose interval overlaps \
         the shipped unit's is marked \"(noise)\": it cannot be told from zero in this run. \
         The sandbox's / is an overlay file system with its own mounts, so mount-namespace \
         options may cost more or less here than on a host; compare within one run only.\n",
        took.as_secs_f64()
    );
    md.push_str(
        "| variant | median ms | 95 % interval of the median | p90 ms | min ms | ÷ floor | Δ vs shipped, ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (i, (v, (med, p90, min, _))) in variants.iter().zip(&stats).enumerate() {
        let (lo, hi) = intervals[i];
        let noise = if i > 0 && lo <= shipped_hi && hi >= shipped_lo {
            " (noise)"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| {} | {med:.2} | {lo:.2}–{hi:.2} | {p90:.2} | {min:.2} | {:.2}× | {:+.2}{noise} |",
            v.label,
            med / floor,
            med - shipped
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "Shipped units ÷ floor with the same options: {:.2}×; shipped ÷ without sandboxing: {:.2}×.",
        shipped / floor,
        shipped / stats[2].0
    );
    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        " \"date\": \"{date}\",\n \"systemd\": \"{systemd}\",\n \"host_load_at_start\": \"{load}\","
    );
    let _ = writeln!(
        json,
        " \"activations_per_variant\": {activations},\n \"idle_timeout\": \"{IDLE_TIMEOUT}\",\n \"elapsed_s\": {:.1},\n \"variants\": [",
        took.as_secs_f64()
    );
    for (i, (v, (med, p90, min, sorted))) in variants.iter().zip(&stats).enumerate() {
        let raw: Vec<String> = v.latencies_ms.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(
            json,
            "  {{\"unit\": \"{}\", \"label\": \"{}\", \"median_ms\": {med:.3}, \"p90_ms\": {p90:.3}, \
             \"min_ms\": {min:.3}, \"max_ms\": {:.3}, \"median_interval_95_ms\": [{:.3}, {:.3}], \
             \"delta_vs_shipped_ms\": {:.3}, \
             \"latencies_ms_in_order\": [{}]}}{}",
            v.unit,
            v.label,
            sorted[sorted.len() - 1],
            intervals[i].0,
            intervals[i].1,
            med - shipped,
            raw.join(", "),
            if i + 1 < variants.len() { "," } else { "" }
        );
    }
    json.push_str(" ]\n}\n");
    print!("{md}");
    let out = format!("{REPO}/bench/results/systemd");
    fs::write(format!("{out}.md"), &md).expect("write bench/results/systemd.md");
    fs::write(format!("{out}.json"), &json).expect("write bench/results/systemd.json");
    println!("bench-systemd: wrote {out}.md, .json");
}
