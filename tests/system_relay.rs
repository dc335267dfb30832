//! Both ends of a relay under a real systemd, in one sandbox, with the
//! shipped units: the relay is sockhook.socket + sockhook.service with a
//! `publish = true` hook; the home side is sockhook-subscribe.service, pointed
//! at it over loopback by a drop-in (as sockhook(8) tells a user to), with
//! its own hooks directory (`auth = "relay"`) and state directory below the
//! unit's. A publish runs the home hook; `systemctl status` shows the
//! subscriber's STATUS line; a stopped subscriber and a killed relay lose
//! nothing.

mod support;

use support::system::*;

const HOME_HOOKS: &str = "/etc/sockhook/home.d";
const HOME_STATE: &str = "/var/lib/sockhook/home";
const UNIT: &str = "sockhook-subscribe.service";

/// The relay's publishing hook, the home hook, the token, the drop-in; the
/// relay's socket and the subscriber started, and connected.
fn both_ends() -> Option<System> {
    let sys = System::install()?;
    sys.hook("kodi", "publish = true\nauth = \"token\"\n");
    sys.run_ok(&format!("install -d -m 0755 {HOME_HOOKS}"));
    sys.sb.write_file(
        &format!("{HOME_HOOKS}/kodi.toml"),
        format!(
            "command = [\"/bin/sh\", \"-c\", \"IFS= read -r line; printf '%s\\\\n' \\\"$line\\\" >>{STATE}/kodi.log\"]\n\
             auth = \"relay\"\n"
        ),
    );
    sys.run_ok(
        "umask 077; sockhook token /sub/hooks/ >/etc/sockhook/relay-token.new && mv /etc/sockhook/relay-token.new /etc/sockhook/relay-token",
    );
    sys.sb.write_file(
        &format!("/etc/systemd/system/{UNIT}.d/url.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart=/usr/local/bin/sockhook subscribe ws://127.0.0.1:7777/sub/hooks/ --token %d/relay-token --hooks {HOME_HOOKS} --state {HOME_STATE}\n"
        ),
    );
    sys.run_ok("systemctl daemon-reload");
    sys.start_socket();
    sys.run_ok(&format!("systemctl start {UNIT}"));
    wait_status(&sys, "connected to ws://127.0.0.1:7777/sub/hooks/");
    Some(sys)
}

/// The subscriber's STATUS= text.
fn status_text(sys: &System) -> String {
    sys.run_ok(&format!("systemctl show -p StatusText --value {UNIT}"))
        .trim()
        .to_owned()
}

fn wait_status(sys: &System, part: &str) -> String {
    sys.wait(&format!("{part:?} in {UNIT}'s status"), PATIENCE, || {
        let text = status_text(sys);
        text.contains(part).then_some(text)
    })
}

/// The bodies the home hook ran, in order.
fn ran(sys: &System) -> Vec<String> {
    sys.read(&format!("{STATE}/kodi.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_ran(sys: &System, body: &str) {
    sys.wait(&format!("{body:?} run at home"), PATIENCE, || {
        ran(sys).iter().any(|l| l == body).then_some(())
    });
}

/// The seqs the home journal took, from its entries' `relay` lines.
fn taken(sys: &System) -> Vec<u64> {
    let lines = sys.run_ok(&format!(
        "cat {HOME_STATE}/deliveries/*.entry 2>/dev/null | sed -n 's/^relay [0-9a-f]* kodi //p' | sort -n"
    ));
    lines.lines().map(|l| l.parse().unwrap()).collect()
}

#[test]
fn a_publish_runs_the_home_hook_and_systemctl_status_says_so() {
    let Some(sys) = both_ends() else {
        return;
    };
    let token = sys.token("/hooks/kodi");
    assert_eq!(sys.post("kodi", &token, "one"), "204");
    wait_ran(&sys, "one");
    let status = wait_status(&sys, "last run: kodi message 1 exited 0");
    let shown = sys.run(&format!("systemctl status --no-pager --full {UNIT}"));
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains(&format!("Status: \"{status}\"")),
        "systemctl status {UNIT}:\n{shown}"
    );
    eprintln!("systemctl status {UNIT}: Status: \"{status}\"");
    // The home hook's path is not served over HTTP by the relay's serve
    // either (there it is a publishing hook); the token never reaches a log.
    let subscriber_log = sys.log(UNIT);
    let sub_token = sys.run_ok("cat /etc/sockhook/relay-token");
    assert!(
        !subscriber_log.contains(sub_token.trim()),
        "{subscriber_log}"
    );
    assert_eq!(taken(&sys), [1]);
}

#[test]
fn a_stopped_subscriber_and_a_killed_relay_lose_nothing() {
    let Some(sys) = both_ends() else {
        return;
    };
    let token = sys.token("/hooks/kodi");
    assert_eq!(sys.post("kodi", &token, "m1"), "204");
    wait_ran(&sys, "m1");
    sys.run_ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(sys.wait_stopped(UNIT), "inactive");
    for body in ["m2", "m3", "m4"] {
        assert_eq!(sys.post("kodi", &token, body), "204");
    }
    sys.run_ok(&format!("systemctl start {UNIT}"));
    wait_ran(&sys, "m4");
    // The newest ran last, whatever coalesced into it.
    wait_status(&sys, "last run: kodi message 4 exited 0");
    assert_eq!(taken(&sys), [1, 2, 3, 4]);
    let order = ran(&sys);
    assert_eq!(order.first().map(String::as_str), Some("m1"));
    assert_eq!(order.last().map(String::as_str), Some("m4"));
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {order:?}"
    );
    // The relay killed between publishes: socket activation starts it again
    // for the subscriber's reconnect and the next sender.
    sys.run_ok("systemctl kill -s KILL sockhook.service");
    sys.wait_stopped("sockhook.service");
    assert_eq!(sys.post("kodi", &token, "m5"), "204");
    wait_ran(&sys, "m5");
    wait_status(&sys, "last run: kodi message 5 exited 0");
    assert_eq!(taken(&sys), [1, 2, 3, 4, 5]);
    let pending = sys.run_ok(&format!("sockhook deliveries --state {HOME_STATE}"));
    sys.wait("every home delivery finished", PATIENCE, || {
        let list = sys.run_ok(&format!("sockhook deliveries --state {HOME_STATE}"));
        (!list.contains("pending")).then_some(())
    });
    eprintln!("home journal:\n{pending}");
}
