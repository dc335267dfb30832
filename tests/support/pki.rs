//! A certificate authority and server certificates made by the tests with
//! the openssl command (no network), and the rule for outside tools: a test
//! that needs a missing tool says `skipped`, or fails under `CI=true`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this is CI (`CI=true`), where a missing tool fails the test.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether everything in `what` is there (`(description, present)`); if
/// not, prints `skipped: …` (straight to stderr: the harness swallows the
/// output of passing tests) and returns false, or fails under `CI=true`.
pub fn need(what: &[(&str, bool)]) -> bool {
    let missing: Vec<&str> = what
        .iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("not installed: {}", missing.join(", "));
    assert!(!ci(), "CI=true, but {why} (.ci/run installs them)");
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    false
}

/// `need` for commands on the PATH.
pub fn need_tools(tools: &[&str]) -> bool {
    let what: Vec<(&str, bool)> = tools.iter().map(|t| (*t, have(t))).collect();
    need(&what)
}

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test certificate authority in a directory of its own.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA's certificate: what clients are told to trust.
    pub ca: PathBuf,
}

/// A server certificate and its key, signed by the test CA.
#[derive(Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// The base64 lines of the private key's PEM: none may ever be logged.
    pub fn key_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.key)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect()
    }

    /// The SHA-256 fingerprint of the certificate, as openssl prints it.
    pub fn fingerprint(&self) -> String {
        let cert = self.cert.to_str().unwrap();
        let dir = self.cert.parent().unwrap();
        openssl(
            dir,
            &["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
        )
        .trim()
        .to_owned()
    }
}

const CA_CONFIG: &str = "\
[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = .
rand_serial = yes
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
x509_extensions = leaf
[any]
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
";

impl Pki {
    /// A new CA (EC P-256) in `dir`.
    pub fn new(dir: &Path) -> Pki {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("ca.cnf"), CA_CONFIG).unwrap();
        fs::write(dir.join("index.txt"), "").unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "3650",
                "-subj",
                "/CN=sockhook test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki {
            dir: dir.to_owned(),
            ca: dir.join("ca.crt"),
        }
    }

    /// A server certificate `NAME.crt` with key `NAME.key` (mode 0600) for
    /// the DNS names and IP addresses `names`, valid from `from` until
    /// `until` (GNU `date -d` expressions such as `-1 hour`, `+90 days`).
    /// `key` chooses the key type: `ec` (P-256) or `rsa` (2048 bits).
    pub fn leaf(&self, name: &str, names: &[&str], from: &str, until: &str, key: &str) -> Leaf {
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let (cert, key_file, csr) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        let mut args = vec!["req", "-newkey"];
        let params = match key {
            "rsa" => ["rsa:2048", "-nodes"],
            _ => ["ec", "-pkeyopt"],
        };
        args.extend(params);
        if key != "rsa" {
            args.extend(["ec_paramgen_curve:P-256", "-nodes"]);
        }
        let subject = format!("/CN={}", names[0]);
        let san = format!("subjectAltName={}", san.join(","));
        args.extend([
            "-keyout", &key_file, "-out", &csr, "-subj", &subject, "-addext", &san,
        ]);
        openssl(&self.dir, &args);
        let date = |when: &str| {
            let out = Command::new("date")
                .args(["-u", "-d", when, "+%Y%m%d%H%M%SZ"])
                .output()
                .unwrap();
            assert!(out.status.success(), "date -d {when:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let (start, end) = (date(from), date(until));
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.crt",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &cert,
                "-startdate",
                &start,
                "-enddate",
                &end,
            ],
        );
        let key = self.dir.join(&key_file);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        Leaf {
            cert: self.dir.join(cert),
            key,
        }
    }

    /// A certificate for `localhost` and `127.0.0.1`, valid from an hour ago
    /// for 90 days.
    pub fn localhost(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            &["localhost", "127.0.0.1"],
            "-1 hour",
            "+90 days",
            "ec",
        )
    }
}
