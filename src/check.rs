//! `sockhook check`: validate every hook file and the key, the way `visudo -c`
//! does. Run as root, it judges each file as the service's user meets it
//! under the installed unit ([`crate::service`]): what that user can read,
//! reach and execute, which credentials the unit loads, what sudoers lets it
//! run, and who else could change what runs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::{self, CREDENTIALS_DIRECTORY, DEFAULT_KEY_FILE, KEY_CREDENTIAL};
use crate::error::{EXIT_FAILED, EXIT_OK};
use crate::scheme::looks_pasted;
use crate::service::{self, Unit, Who};

/// The user the shipped units run sockhook as.
pub const DEFAULT_USER: &str = "sockhook";
/// The sudoers drop-in that `make install` and the package ship.
const SUDOERS_DROPIN: &str = "/etc/sudoers.d/sockhook";

/// Prints one line per hook and per problem on stdout; returns the exit code.
pub fn check(hooks_dir: &Path, key: Option<&Path>, user: Option<&str>) -> u8 {
    let mut general = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    let unit = root.then(Unit::find).flatten();
    let who = if root {
        let name = user
            .map(str::to_owned)
            .or_else(|| unit.as_ref().and_then(|u| u.user.clone()))
            .unwrap_or_else(|| DEFAULT_USER.to_owned());
        let who = Who::named(&name);
        match (&who, &unit, user) {
            (Some(_), _, _) | (None, None, None) => {}
            (None, Some(unit), None) => general.push(format!(
                "{}: User={name}: no such user; create it with systemd-sysusers (make install and the package do)",
                unit.path.display()
            )),
            (None, _, Some(_)) => general.push(format!("--user {name}: no such user")),
        }
        who
    } else {
        if let Some(name) = user {
            general.push(format!(
                "--user {name}: judging files as another user needs root; run sudo sockhook check"
            ));
        }
        None
    };
    let explicit_credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    // The unit's credentials, where check can read them as systemd will:
    // a private directory of links to their sources.
    let staged = match (&explicit_credentials, &who, &unit) {
        (None, Some(_), Some(unit)) => Staged::new(unit),
        _ => None,
    };
    let credentials = explicit_credentials
        .clone()
        .or_else(|| staged.as_ref().map(|s| s.dir.clone()));
    let hooks = config::load(hooks_dir, credentials.as_deref());
    let judge = who.as_ref().map(|who| Judge {
        who,
        unit: unit.as_ref().filter(|_| explicit_credentials.is_none()),
    });

    general.extend(hooks.general.iter().map(ToString::to_string));
    // A directory the user cannot read serves no hook at all.
    let mut closed = false;
    if let Some(judge) = &judge
        && hooks.unavailable().is_none()
    {
        let (shut, problems) = judge.hooks_dir(hooks_dir);
        closed = shut;
        general.extend(problems);
    }
    let mut skipped = Vec::new();
    for path in &hooks.skipped {
        match misnamed(path) {
            Some(problem) => general.push(problem),
            None => skipped.push(path),
        }
    }
    if hooks.need_key() {
        general.extend(key_problems(key, explicit_credentials.as_deref(), &judge));
    }

    let mut per_hook: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, hook) in hooks.iter() {
        let file = hooks_dir.join(format!("{name}.toml"));
        let mut problems = Vec::new();
        let mut config_problem = hook.as_ref().err().map(ToString::to_string);
        if let Some(judge) = &judge {
            problems.extend(judge.hook_file(&file));
            let secret = secret_spec(&file);
            if let Some(spec) = secret.as_deref().filter(|s| !looks_pasted(s)) {
                let (own, secret_problems) = judge.secret(&file, name, spec);
                problems.extend(secret_problems);
                // A credential the unit does not load: say that, not what
                // reading the missing link in the staging directory said.
                if own
                    && config_problem
                        .as_deref()
                        .is_some_and(|p| p.contains(": secret: "))
                {
                    config_problem = None;
                }
            }
            if let Ok(hook) = hook
                && !hook.command.is_empty()
            {
                problems.extend(judge.command(&file, &hook.command));
            }
        }
        if let (Some(staged), Some(problem)) = (&staged, &mut config_problem) {
            *problem = staged.unstage(problem);
        }
        problems.splice(0..0, config_problem);
        per_hook.insert(name, problems);
    }

    for (name, hook) in hooks.iter() {
        if let Ok(hook) = hook
            && !closed
            && per_hook.get(name).is_none_or(Vec::is_empty)
        {
            if hook.scheme == crate::scheme::Scheme::Relay {
                println!(
                    "{}{name}: ok: auth relay (run by sockhook subscribe for the relay's hook {name}; never from HTTP), runs {}",
                    config::HOOKS_PREFIX,
                    describe_command(&hook.command)
                );
                continue;
            }
            println!(
                "{}{name}: ok: auth {}{}, {} {}{}",
                config::HOOKS_PREFIX,
                hook.scheme.name(),
                secrets_note(hook),
                hook.methods.join("/"),
                describe_action(hook),
                allow_from_note(hook)
            );
        }
    }
    for path in skipped {
        println!(
            "{}: skipped: not NAME.toml with NAME of [A-Za-z0-9._-]",
            path.display()
        );
    }
    let problems: Vec<String> = general
        .into_iter()
        .chain(per_hook.into_values().flatten())
        .collect();
    for problem in &problems {
        println!("{problem}");
    }
    let count = hooks.iter().count();
    let judged = match (&who, &judge.as_ref().and_then(|j| j.unit)) {
        (Some(who), Some(unit)) => format!(
            ", as user {} meets them under {}",
            who.name,
            unit.path.display()
        ),
        (Some(who), None) => format!(", as user {} meets them", who.name),
        _ => String::new(),
    };
    println!(
        "{count} hook(s) in {}, {} problem(s){judged}",
        hooks_dir.display(),
        problems.len()
    );
    drop(staged);
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// A directory of links named by credential id to the unit's credential
/// sources, standing in for `$CREDENTIALS_DIRECTORY`; removed on drop.
struct Staged {
    dir: PathBuf,
    links: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    fn new(unit: &Unit) -> Option<Staged> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("sockhook-check.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
        let mut staged = Staged {
            dir,
            links: Vec::new(),
        };
        for (id, source) in &unit.credentials {
            if let Some(source) = source.as_deref().filter(|s| s.is_file()) {
                let link = staged.dir.join(id);
                if std::os::unix::fs::symlink(source, &link).is_ok() {
                    staged.links.push((link, source.to_owned()));
                }
            }
        }
        Some(staged)
    }

    /// `message` with each staged link's path replaced by its source.
    fn unstage(&self, message: &str) -> String {
        self.links
            .iter()
            .fold(message.to_owned(), |m, (link, source)| {
                m.replace(&*link.to_string_lossy(), &source.to_string_lossy())
            })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A file in the hooks directory that looks meant as a hook but will not be
/// served, with the rule and a name that would be.
fn misnamed(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_string_lossy();
    let stem = file_name
        .get(..file_name.len().checked_sub(5)?)
        .filter(|_| file_name[file_name.len() - 5..].eq_ignore_ascii_case(".toml"))?;
    let mut fixed: String = stem
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    fixed = fixed.trim_start_matches('.').to_owned();
    fixed.truncate(config::MAX_NAME_BYTES);
    let suggestion = match config::valid_name(&fixed) {
        true => format!("; rename it, e.g. to {fixed}.toml"),
        false => String::new(),
    };
    Some(format!(
        "{}: not served: a hook file is NAME.toml (lower-case .toml), NAME 1 to {} characters of A-Z a-z 0-9 . _ - not starting with a dot{suggestion}",
        path.display(),
        config::MAX_NAME_BYTES
    ))
}

/// The `secret` value of a hook file, if it parses and has one.
fn secret_spec(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("secret")?.as_str().map(str::to_owned)
}

/// The server key as the service will get it: from `--key` or
/// `$CREDENTIALS_DIRECTORY` as given; else through the unit's
/// `LoadCredential=key:` (read by systemd, as root), or, without a unit, from
/// the default file as the service's user reads it.
fn key_problems(
    explicit: Option<&Path>,
    credentials: Option<&Path>,
    judge: &Option<Judge>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (path, read_by_user) = match (explicit, credentials, judge) {
        (Some(path), _, Some(_)) => (path.to_owned(), true),
        (None, None, Some(judge)) => match judge.unit {
            Some(unit) => match unit.credential(KEY_CREDENTIAL) {
                Some(Some(source)) => (source.to_owned(), false),
                Some(None) => {
                    return vec![format!(
                        "{}: LoadCredential={KEY_CREDENTIAL} finds no file in /etc/credstore, /run/credstore or /usr/lib/credstore; give the key's path: LoadCredential=key:{DEFAULT_KEY_FILE}",
                        unit.path.display()
                    )];
                }
                None => {
                    return vec![format!(
                        "{}: no LoadCredential=key:, so token hooks have no server key; add LoadCredential=key:{DEFAULT_KEY_FILE} (systemctl edit {})",
                        unit.path.display(),
                        service::UNIT
                    )];
                }
            },
            None => (PathBuf::from(DEFAULT_KEY_FILE), true),
        },
        _ => (config::key_path(explicit, credentials), false),
    };
    match config::load_key(&path) {
        Err(problem) => problems.push(problem.to_string()),
        Ok(_) => {
            let meta = fs::metadata(&path).ok();
            let mode = meta.as_ref().map_or(0, |m| m.permissions().mode());
            if mode & 0o004 != 0 {
                problems.push(format!(
                    "{}: every user can read the server key (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ));
            }
            if let (true, Some(judge), Some(meta)) = (read_by_user, judge, &meta) {
                let who = &judge.who.name;
                if !judge.who.may(meta, 4) || judge.who.blocked_at(&path).is_some() {
                    problems.push(format!(
                        "{}: user {who} cannot read the server key ({}); keep it root-only and give the service a copy: LoadCredential=key:{} (systemctl edit {})",
                        path.display(),
                        service::describe(meta),
                        path.display(),
                        service::UNIT
                    ));
                }
            }
        }
    }
    problems
}

/// The service's user, and the unit it runs under (when check follows one).
struct Judge<'a> {
    who: &'a Who,
    unit: Option<&'a Unit>,
}

impl Judge<'_> {
    /// The hooks directory: readable and reachable by the user (else the
    /// first value is true), and safe.
    fn hooks_dir(&self, dir: &Path) -> (bool, Vec<String>) {
        let name = &self.who.name;
        let mut problems = Vec::new();
        if let Some((blocked, meta)) = self.who.blocked_at(dir) {
            problems.push(format!(
                "{}: user {name} cannot reach the hooks directory: {} ({}) is closed to it; chmod o+x {}",
                dir.display(),
                blocked.display(),
                service::describe(&meta),
                blocked.display()
            ));
        } else if let Ok(meta) = fs::metadata(dir)
            && !self.who.may(&meta, 5)
        {
            problems.push(format!(
                "{}: user {name} cannot read the hooks directory ({}); chgrp {name} {} && chmod 0750 {}",
                dir.display(),
                service::describe(&meta),
                dir.display(),
                dir.display()
            ));
        }
        let closed = !problems.is_empty();
        problems.extend(unsafe_path(dir, &[self.who.uid], "change the hooks"));
        (closed, problems)
    }

    /// A hook file: readable by the user, and safe.
    fn hook_file(&self, file: &Path) -> Vec<String> {
        let name = &self.who.name;
        let mut problems = Vec::new();
        if let Ok(meta) = fs::metadata(file)
            && !self.who.may(&meta, 4)
        {
            problems.push(format!(
                "{}: user {name} cannot read this hook file ({}); chgrp {name} {} && chmod 0640 {}",
                file.display(),
                service::describe(&meta),
                file.display(),
                file.display()
            ));
        }
        if let Ok(meta) = fs::metadata(file) {
            problems.extend(unsafe_file(
                file,
                &meta,
                &[self.who.uid],
                "make this hook run anything",
            ));
        }
        problems
    }

    /// The hook's secret as the service reads it: a credential the unit must
    /// load, or a file the user must be able to read. Also returns whether
    /// a problem here replaces what loading the hook said about the secret.
    fn secret(&self, file: &Path, hook: &str, spec: &str) -> (bool, Vec<String>) {
        let name = &self.who.name;
        let at = file.display();
        if !spec.starts_with('/') {
            let Some(unit) = self.unit else {
                return (false, Vec::new());
            };
            let problem = match unit.credential(spec) {
                None => format!(
                    "{at}: secret: {} loads no credential {spec:?}; add LoadCredential={spec}:/etc/sockhook/{spec} (systemctl edit {})",
                    unit.path.display(),
                    service::UNIT
                ),
                Some(None) => format!(
                    "{at}: secret: LoadCredential={spec} finds no file in /etc/credstore, /run/credstore or /usr/lib/credstore; give the path: LoadCredential={spec}:/etc/sockhook/{spec}"
                ),
                Some(Some(source)) if !source.is_file() => format!(
                    "{at}: secret: credential {spec:?} is loaded from {}, which does not exist; create it root-only (install -m 0600 /dev/null FILE) and write the sender's secret into it",
                    source.display()
                ),
                Some(Some(source)) => {
                    let safe = fs::metadata(source).map(|meta| {
                        unsafe_file(source, &meta, &[], "change the secret")
                            .into_iter()
                            .map(|p| format!("{at}: secret: {p}"))
                            .collect()
                    });
                    return (false, safe.unwrap_or_default());
                }
            };
            return (true, vec![problem]);
        }
        let path = Path::new(spec);
        let Ok(meta) = fs::metadata(path) else {
            return (false, Vec::new());
        };
        let mut problems = Vec::new();
        if !self.who.may(&meta, 4) || self.who.blocked_at(path).is_some() {
            let id = hook;
            problems.push(format!(
                "{at}: secret: user {name} cannot read {spec} ({}); chgrp {name} {spec} && chmod 0640 {spec}, or keep it root-only and load it as a credential: LoadCredential={id}:{spec} (systemctl edit {}) and secret = \"{id}\"",
                service::describe(&meta),
                service::UNIT
            ));
        }
        problems.extend(
            unsafe_file(path, &meta, &[self.who.uid], "change the secret")
                .into_iter()
                .map(|p| format!("{at}: secret: {p}")),
        );
        (false, problems)
    }

    /// The command: executable by the user, its interpreter there, safe;
    /// through sudo, allowed by sudoers for exactly these arguments, and the
    /// real command the same for its target user.
    fn command(&self, file: &Path, command: &[String]) -> Vec<String> {
        let at = format!("{}: command:", file.display());
        let program = Path::new(&command[0]);
        let mut problems = runnable(&at, program, self.who);
        let Some(sudo) = Sudo::parse(command) else {
            problems.extend(prefixed(
                &at,
                &unsafe_path(program, &[self.who.uid], "change what this hook runs"),
            ));
            return problems;
        };
        if !problems.is_empty() {
            return problems;
        }
        let Some(real) = sudo.command.first() else {
            return vec![format!("{at} sudo is given no command to run")];
        };
        if !sudo.non_interactive {
            problems.push(format!(
                "{at} sudo without -n waits for a password nobody types; add \"-n\" after \"{}\"",
                command[0]
            ));
        }
        let target_name = sudo.user.as_deref().unwrap_or("root");
        let Some(target) = Who::named(target_name) else {
            problems.push(format!("{at} sudo -u {target_name}: no such user"));
            return problems;
        };
        problems.extend(self.sudoers(&at, &command[0], &sudo, target_name));
        let real_path = Path::new(real);
        if !real_path.exists() {
            problems.push(format!("{at} sudo -n runs {real}, which does not exist"));
            return problems;
        }
        problems.extend(runnable(&at, real_path, &target));
        let owners = [target.uid];
        let what = format!("change what runs as {target_name}");
        problems.extend(prefixed(&at, &unsafe_path(real_path, &owners, &what)));
        problems
    }

    /// Whether sudoers lets the user run the command with exactly these
    /// arguments, asked of sudo itself: `sudo -n -l -U USER -- COMMAND…`.
    fn sudoers(&self, at: &str, sudo_path: &str, sudo: &Sudo, target: &str) -> Option<String> {
        let name = &self.who.name;
        let mut ask = Command::new(sudo_path);
        ask.args(["-n", "-l", "-U", name]);
        if let Some(user) = &sudo.user {
            ask.args(["-u", user]);
        }
        if let Some(group) = &sudo.group {
            ask.args(["-g", group]);
        }
        ask.arg("--").args(&sudo.command);
        ask.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        let out = match ask.output() {
            Ok(out) => out,
            Err(e) => return Some(format!("{at} unable to ask {sudo_path}: {e}")),
        };
        if out.status.success() {
            return None;
        }
        let said = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = said.lines().find(|l| l.contains("error")) {
            return Some(format!("{at} sudo cannot read its configuration: {line}"));
        }
        let runas = match &sudo.group {
            Some(group) => format!("{target}:{group}"),
            None => target.to_owned(),
        };
        let args: Vec<String> = sudo.command[1..].iter().map(|a| sudoers_word(a)).collect();
        let args = match args.is_empty() {
            true => " \"\"".to_owned(),
            false => format!(" {}", args.join(" ")),
        };
        Some(format!(
            "{at} sudoers does not let user {name} run {} as {target}; add this line with visudo -f {SUDOERS_DROPIN}: {name} ALL=({runas}) NOPASSWD: {}{args}",
            shown(&sudo.command),
            sudoers_word(&sudo.command[0])
        ))
    }
}

/// Problems of running `program` as `who`: it cannot be reached or
/// executed, or it is a script whose `#!` interpreter is missing or cannot
/// be run, or that `who` cannot read.
fn runnable(at: &str, program: &Path, who: &Who) -> Vec<String> {
    let name = &who.name;
    let shown = program.display();
    if let Some((blocked, meta)) = who.blocked_at(program) {
        return vec![format!(
            "{at} user {name} cannot reach {shown}: {} ({}) is closed to it; chmod o+x {}",
            blocked.display(),
            service::describe(&meta),
            blocked.display()
        )];
    }
    let Ok(meta) = fs::metadata(program) else {
        return Vec::new();
    };
    if !who.may(&meta, 1) {
        return vec![format!(
            "{at} user {name} cannot execute {shown} ({}); chmod 0755 {shown}",
            service::describe(&meta)
        )];
    }
    let Some(interpreter) = interpreter(program) else {
        return Vec::new();
    };
    let path = Path::new(&interpreter);
    match fs::metadata(path) {
        Err(_) => vec![format!(
            "{at} {shown} starts with #!{interpreter}, which does not exist; install it or correct the script's first line"
        )],
        Ok(imeta) if !who.may(&imeta, 1) || who.blocked_at(path).is_some() => vec![format!(
            "{at} {shown} starts with #!{interpreter}, which user {name} cannot execute ({})",
            service::describe(&imeta)
        )],
        Ok(_) if !who.may(&meta, 4) => vec![format!(
            "{at} user {name} cannot read the script {shown} ({}), which {interpreter} must; chmod 0755 {shown}",
            service::describe(&meta)
        )],
        Ok(_) => Vec::new(),
    }
}

/// The interpreter a `#!` line names, if the file starts with one.
fn interpreter(program: &Path) -> Option<String> {
    let mut head = [0; 256];
    let n = fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_owned)
}

/// Who besides `owners` and root could change `path` or a directory above
/// it (so `what` would follow): sudo's and sshd's rules — nothing writable by
/// every user, nothing owned by another user.
fn unsafe_path(path: &Path, owners: &[u32], what: &str) -> Vec<String> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let mut problems = unsafe_file(path, &meta, owners, what);
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if let Ok(meta) = fs::metadata(dir) {
            problems.extend(unsafe_file(dir, &meta, owners, what));
        }
    }
    problems
}

/// [`unsafe_path`] for one file or directory.
fn unsafe_file(path: &Path, meta: &fs::Metadata, owners: &[u32], what: &str) -> Vec<String> {
    let shown = path.display();
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o002 != 0 && !sticky_dir {
        return vec![format!(
            "{shown} is writable by every user ({}), who could {what}; chmod o-w {shown}",
            service::describe(meta)
        )];
    }
    if meta.uid() != 0 && !owners.contains(&meta.uid()) {
        return vec![format!(
            "{shown} belongs to user {} ({}), who could {what}; chown root {shown}",
            service::user_name(meta.uid()),
            service::describe(meta)
        )];
    }
    Vec::new()
}

fn prefixed(at: &str, problems: &[String]) -> Vec<String> {
    problems.iter().map(|p| format!("{at} {p}")).collect()
}

/// A `sudo` command line taken apart.
#[derive(Debug, PartialEq)]
struct Sudo {
    non_interactive: bool,
    user: Option<String>,
    group: Option<String>,
    /// The command sudo runs and its arguments.
    command: Vec<String>,
}

impl Sudo {
    /// `command` as sudo reads it, if its program is sudo.
    fn parse(command: &[String]) -> Option<Sudo> {
        let (program, args) = command.split_first()?;
        if Path::new(program).file_name()? != "sudo" {
            return None;
        }
        let mut sudo = Sudo {
            non_interactive: false,
            user: None,
            group: None,
            command: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--" => break,
                "--non-interactive" => sudo.non_interactive = true,
                "--user" => sudo.user = args.next().cloned(),
                "--group" => sudo.group = args.next().cloned(),
                long if long.starts_with("--user=") => sudo.user = Some(long[7..].to_owned()),
                long if long.starts_with("--group=") => sudo.group = Some(long[8..].to_owned()),
                long if long.starts_with("--") => {}
                short if short.starts_with('-') && short.len() > 1 => {
                    for (i, c) in short.char_indices().skip(1) {
                        let mut value = || match &short[i + 1..] {
                            "" => args.next().cloned(),
                            rest => Some(rest.to_owned()),
                        };
                        match c {
                            'n' => sudo.non_interactive = true,
                            'u' => {
                                sudo.user = value();
                                break;
                            }
                            'g' => {
                                sudo.group = value();
                                break;
                            }
                            _ => {}
                        }
                    }
                }
                _ => {
                    sudo.command.push(arg.clone());
                    break;
                }
            }
        }
        sudo.command.extend(args.cloned());
        Some(sudo)
    }
}

/// What the ok line says a hook runs: the command after `sudo` and its
/// options, with the user it runs as.
/// What an accepted delivery does: runs the command, publishes, or both.
fn describe_action(hook: &config::Hook) -> String {
    let publish = hook.publish.map(|p| {
        format!(
            "publishes to {}{} (keeps {} messages, {} bytes)",
            crate::relay::SUB_PREFIX,
            hook.name,
            p.keep,
            p.max_bytes
        )
    });
    match (hook.command.is_empty(), publish) {
        (true, Some(publish)) => publish,
        (false, Some(publish)) => {
            format!("runs {} and {publish}", describe_command(&hook.command))
        }
        (_, None) => format!("runs {}", describe_command(&hook.command)),
    }
}

fn describe_command(command: &[String]) -> String {
    match Sudo::parse(command) {
        Some(sudo) if !sudo.command.is_empty() => format!(
            "{} as {} (sudo -n)",
            shown(&sudo.command),
            sudo.user.as_deref().unwrap_or("root")
        ),
        _ => shown(command),
    }
}

/// An argv as one line; arguments that need it quoted.
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\"'\\$`".contains(&b));
            match plain {
                true => a.clone(),
                false => format!("{a:?}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An argument as sudoers(5) wants it written: `\`, `,`, `:`, `=` and
/// blanks escaped.
fn sudoers_word(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for c in arg.chars() {
        if matches!(c, '\\' | ',' | ':' | '=' | ' ' | '\t') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// HTTPS: the certificate chain and its key (issue 12). Kept apart from the
// hook checks above: `check_tls` prints its own lines after theirs.
// ---------------------------------------------------------------------------

/// A certificate that expires within this many days is warned about.
pub const CERT_WARN_DAYS: i64 = 14;

/// What `sockhook check` says about the HTTPS certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFinding {
    /// Fine; what was checked.
    Ok(String),
    /// Works for now, but needs attention soon.
    Warning(String),
    /// HTTPS connections would be closed unanswered.
    Problem(String),
}

/// Checks the certificate and key that `sockhook serve` would use: when
/// `--tls-cert` or `--tls-key` names them, or when either file exists (the
/// credential, or the default path); an unconfigured HTTPS is not a problem.
/// Prints one line per finding; returns the exit code.
pub fn check_tls(cert: Option<&Path>, key: Option<&Path>) -> u8 {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let files = crate::tls::Files::new(cert, key, credentials.as_deref());
    let configured = cert.is_some()
        || key.is_some()
        || std::fs::symlink_metadata(&files.cert).is_ok()
        || std::fs::symlink_metadata(&files.key).is_ok();
    if !configured {
        return EXIT_OK;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let findings = tls_findings(&files, now);
    let mut code = EXIT_OK;
    for finding in &findings {
        match finding {
            TlsFinding::Ok(text) => println!("{text}"),
            TlsFinding::Warning(text) => println!("{text}"),
            TlsFinding::Problem(text) => {
                println!("{text}");
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// The findings for `files` at `now` (seconds since 1970): each problem
/// names the file at fault and says how to fix it; nothing of the key is
/// ever shown.
pub fn tls_findings(files: &crate::tls::Files, now: i64) -> Vec<TlsFinding> {
    let mut findings = Vec::new();
    let problem =
        |path: &Path, what: &str| TlsFinding::Problem(format!("{}: {what}", path.display()));
    for (path, what, option) in [
        (&files.cert, "certificate chain", "--tls-cert"),
        (&files.key, "private key", "--tls-key"),
    ] {
        if let Err(e) = std::fs::metadata(path) {
            findings.push(problem(
                path,
                &match e.kind() {
                    std::io::ErrorKind::NotFound => format!(
                        "the HTTPS {what} is missing: create it (PEM; e.g. a symlink to certbot's /etc/letsencrypt/live/NAME/{}), or name another file with {option}",
                        if option == "--tls-cert" { "fullchain.pem" } else { "privkey.pem" }
                    ),
                    _ => format!("cannot look at the HTTPS {what}: {e}"),
                },
            ));
            continue;
        }
        if let Err(e) = std::fs::File::open(path) {
            findings.push(problem(
                path,
                &format!(
                    "the HTTPS {what} is unreadable ({e}): under systemd, LoadCredential= reads it as root; otherwise let the user sockhook runs as read it (chown or chmod)"
                ),
            ));
        }
    }
    if let Ok(meta) = std::fs::metadata(&files.key)
        && meta.permissions().mode() & 0o004 != 0
    {
        findings.push(problem(
            &files.key,
            &format!(
                "every user can read the HTTPS private key (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    if !findings.is_empty() {
        return findings;
    }
    let loaded = match crate::tls::load(files) {
        Ok(loaded) => loaded,
        Err(p) => {
            let fix = if p.message.contains("does not go with") {
                "; use the key the certificate was issued for (certbot: privkey.pem of the same live/NAME)"
            } else {
                ""
            };
            findings.push(TlsFinding::Problem(format!("{p}{fix}")));
            return findings;
        }
    };
    let cert = &files.cert;
    let (not_before, not_after) = match crate::tls::validity(&loaded.chain[0]) {
        Ok(period) => period,
        Err(why) => {
            findings.push(problem(
                cert,
                &format!("cannot read the first certificate's validity ({why}); is it an X.509 certificate?"),
            ));
            return findings;
        }
    };
    let days_left = (not_after - now).div_euclid(86_400);
    findings.push(if now < not_before {
        problem(
            cert,
            &format!(
                "the certificate is not valid yet: from {} on (now {}); check the clock, or use the certificate in force",
                crate::tls::utc(not_before),
                crate::tls::utc(now)
            ),
        )
    } else if now > not_after {
        problem(
            cert,
            &format!(
                "the certificate expired on {}; renew it (certbot renew), and the next activation serves the new one",
                crate::tls::utc(not_after)
            ),
        )
    } else if days_left < CERT_WARN_DAYS {
        TlsFinding::Warning(format!(
            "{}: warning: the certificate expires on {}, in {days_left} day(s); renew it (certbot renew, or check its timer), and the next activation serves the new one",
            cert.display(),
            crate::tls::utc(not_after)
        ))
    } else {
        TlsFinding::Ok(format!(
            "{}: ok: HTTPS certificate chain of {}, valid until {} ({days_left} days), with its key {}",
            cert.display(),
            loaded.chain.len(),
            crate::tls::utc(not_after),
            files.key.display()
        ))
    });
    findings
}

/// How many secrets a hook checks with, never what they are: `" (2 secrets)"`
/// while one is being rotated, nothing for one or none.
fn secrets_note(hook: &config::Hook) -> String {
    match hook.secrets.len() {
        0 | 1 => String::new(),
        n => format!(" ({n} secrets)"),
    }
}

/// The addresses a hook is limited to and the variables its `[env]` sets:
/// `", from 10.0.0.0/8 ::1/128, env SOCKHOOK_REF COMMIT"`.
fn allow_from_note(hook: &config::Hook) -> String {
    let mut note = String::new();
    if !hook.allow_from.is_empty() {
        let blocks: Vec<String> = hook.allow_from.iter().map(ToString::to_string).collect();
        note.push_str(&format!(", from {}", blocks.join(" ")));
    }
    if let Some(env) = &hook.filters.env {
        note.push_str(&format!(
            ", env {}",
            env.names().collect::<Vec<_>>().join(" ")
        ));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn sudo_options_are_told_from_the_command() {
        let sudo =
            Sudo::parse(&argv(&["/usr/bin/sudo", "-n", "-u", "deploy", "/x", "-n"])).unwrap();
        assert!(sudo.non_interactive);
        assert_eq!(sudo.user.as_deref(), Some("deploy"));
        assert_eq!(sudo.command, argv(&["/x", "-n"]));
        let sudo = Sudo::parse(&argv(&["/usr/bin/sudo", "-nudeploy", "--", "/y"])).unwrap();
        assert!(sudo.non_interactive && sudo.user.as_deref() == Some("deploy"));
        assert_eq!(sudo.command, argv(&["/y"]));
        let sudo = Sudo::parse(&argv(&["/usr/bin/sudo", "/z", "a"])).unwrap();
        assert!(!sudo.non_interactive);
        assert_eq!(sudo.command, argv(&["/z", "a"]));
        assert_eq!(Sudo::parse(&argv(&["/bin/true"])), None);
    }

    #[test]
    fn the_ok_line_shows_the_command_after_sudo() {
        assert_eq!(
            describe_command(&argv(&[
                "/usr/bin/sudo",
                "-n",
                "/usr/bin/systemctl",
                "restart",
                "kodi.service"
            ])),
            "/usr/bin/systemctl restart kodi.service as root (sudo -n)"
        );
        assert_eq!(
            describe_command(&argv(&["/bin/echo", "a b", ""])),
            "/bin/echo \"a b\" \"\""
        );
    }

    #[test]
    fn misnamed_hook_files_get_the_rule_and_a_name() {
        let problem = misnamed(Path::new("/h/kodi restart.toml")).unwrap();
        assert!(
            problem.ends_with("rename it, e.g. to kodi-restart.toml"),
            "{problem}"
        );
        let problem = misnamed(Path::new("/h/Kodi.TOML")).unwrap();
        assert!(
            problem.ends_with("rename it, e.g. to Kodi.toml"),
            "{problem}"
        );
        assert_eq!(misnamed(Path::new("/h/README")), None);
        assert_eq!(misnamed(Path::new("/h/a.toml.bak")), None);
    }

    #[test]
    fn sudoers_words_are_escaped() {
        assert_eq!(sudoers_word("a,b:c=d e\\"), "a\\,b\\:c\\=d\\ e\\\\");
    }
}
