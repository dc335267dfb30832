//! HTTPS: the certificate and key, and connections that speak TLS over a
//! socket the event loop drives without blocking (rustls, ring).
//!
//! The certificate chain and key are PEM files — by default the systemd
//! credentials `tls.crt` and `tls.key` (`LoadCredential=` can read root-only
//! files such as certbot's) — read at the first TLS connection of each
//! activation, so a renewed certificate is used from the next activation on
//! and plain-HTTP requests never pay for loading it. TLS 1.2 and 1.3 only,
//! ALPN `http/1.1` only, no client certificates.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, Problem};
use crate::listen::Stream;
use crate::respond::Outlet;

/// The credential name of the certificate chain (`LoadCredential=tls.crt:…`).
pub const CERT_CREDENTIAL: &str = "tls.crt";
/// The credential name of the private key (`LoadCredential=tls.key:…`).
pub const KEY_CREDENTIAL: &str = "tls.key";
/// The certificate chain outside systemd.
pub const DEFAULT_CERT_FILE: &str = "/etc/sockhook/tls.crt";
/// The private key outside systemd.
pub const DEFAULT_KEY_FILE: &str = "/etc/sockhook/tls.key";
/// Largest certificate chain file accepted, in bytes.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Where the certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Files {
    /// `--tls-cert`/`--tls-key`, else the credentials, else the defaults.
    pub fn new(cert: Option<&Path>, key: Option<&Path>, credentials: Option<&Path>) -> Files {
        let pick = |explicit: Option<&Path>, credential: &str, default: &str| match (
            explicit,
            credentials,
        ) {
            (Some(path), _) => path.to_owned(),
            (None, Some(dir)) => dir.join(credential),
            (None, None) => PathBuf::from(default),
        };
        Files {
            cert: pick(cert, CERT_CREDENTIAL, DEFAULT_CERT_FILE),
            key: pick(key, KEY_CREDENTIAL, DEFAULT_KEY_FILE),
        }
    }
}

/// A certificate chain and its key, as loaded.
pub struct Loaded {
    /// The server configuration for new connections.
    pub config: Arc<ServerConfig>,
    /// The chain, leaf first, for `sockhook check`'s dates.
    pub chain: Vec<CertificateDer<'static>>,
}

/// Reads and checks the chain and key; the problem names the file at fault
/// and never shows any of the key.
pub fn load(files: &Files) -> Result<Loaded, Problem> {
    let problem = |path: &Path, message: String| Problem {
        path: path.to_owned(),
        message,
    };
    let cert_pem = read_pem(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| problem(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(problem(
            &files.cert,
            "holds no certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key_pem = read_pem(&files.key)?;
    // The key's bytes are never put in a message: only what kind of problem it is.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        problem(
            &files.key,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem(&files.cert, format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .map_err(|e| {
            problem(
                &files.key,
                format!(
                    "does not go with the certificate in {}: {e}",
                    files.cert.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        chain,
    })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Problem> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| Problem {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
    if let Some(source) = bytes.strip_prefix(config::MISSING_CREDENTIAL.as_bytes()) {
        return Err(Problem {
            path: path.to_owned(),
            message: format!(
                "systemd found no {} for this credential (LoadCredential=) and passed the unit's SetCredential= placeholder; create it, and the next activation reads it",
                String::from_utf8_lossy(source)
            ),
        });
    }
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(Problem {
            path: path.to_owned(),
            message: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// A connection, plain or TLS: what the event loop reads requests from and
/// writes answers to.
pub enum Transport {
    /// Plain HTTP.
    Plain(Stream),
    /// HTTPS.
    Tls(Box<TlsStream>),
}

/// A TLS server connection over a non-blocking socket.
pub struct TlsStream {
    tcp: Stream,
    tls: rustls::ServerConnection,
    closing: bool,
}

impl Transport {
    /// A TLS connection over `tcp` with `config`.
    pub fn tls(tcp: Stream, config: Arc<ServerConfig>) -> io::Result<Transport> {
        let tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(TlsStream {
            tcp,
            tls,
            closing: false,
        })))
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether the TLS handshake is still going on.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.is_handshaking(),
        }
    }

    /// Whether bytes wait to go out (TLS records): watch for writability.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Writes out what waits to go; `WouldBlock` if the socket takes no more now.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_records(),
        }
    }

    /// Reads raw bytes off the socket, to discard them while draining.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.tcp.read(buf),
        }
    }

    /// The socket underneath.
    pub fn socket(&self) -> &Stream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.tcp,
        }
    }
}

impl TlsStream {
    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }
}

impl Read for Transport {
    /// Plaintext: `WouldBlock` until a whole record of it has arrived; `Ok(0)`
    /// at the peer's close (a `close_notify`, or, before the handshake is
    /// done, the socket's end); `InvalidData` for what is not TLS.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.read(buf),
            Transport::Tls(t) => t,
        };
        loop {
            match t.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match t.tls.read_tls(&mut t.tcp) {
                Ok(0) if t.tls.is_handshaking() => return Ok(0),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = t.tls.process_new_packets() {
                // The alert rustls queued for the peer, if the socket takes it.
                let _ = t.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            match t.flush_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.write(buf),
            Transport::Tls(t) => t,
        };
        let n = t.tls.writer().write(buf)?;
        match t.flush_records() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full and the socket takes no more.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}

impl Outlet for Transport {
    /// TLS: `close_notify` first, then every record out, then the FIN.
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown_write(),
            Transport::Tls(t) => {
                if !t.closing {
                    t.tls.send_close_notify();
                    t.closing = true;
                }
                t.flush_records()?;
                t.tcp.shutdown_write()
            }
        }
    }
}
