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

    /// One `writev` in plain text, one record in TLS: a frame's header and
    /// its payload leave together, so Nagle's algorithm never holds the
    /// payload back for the peer's delayed ACK of the header.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.write_vectored(bufs),
            Transport::Tls(t) => t,
        };
        let n = t.tls.writer().write_vectored(bufs)?;
        match t.flush_records() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {}
            Err(e) => return Err(e),
        }
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
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

/// When a DER certificate is valid: `notBefore` and `notAfter` of its
/// `Validity` (RFC 5280 §4.1.2.5), in seconds since 1970 (UTC).
///
/// A minimal reader for `sockhook check`: rustls and webpki parse the same
/// fields but keep them private. It walks only the outer structure
/// (`Certificate` → `tbsCertificate` → version, serial, signature, issuer)
/// and fails on anything it does not expect rather than guessing.
pub fn validity(der: &[u8]) -> Result<(i64, i64), &'static str> {
    const SEQUENCE: u8 = 0x30;
    let (certificate, _) = der_tlv(der, SEQUENCE)?;
    let (mut tbs, _) = der_tlv(certificate, SEQUENCE)?;
    // version [0] EXPLICIT, absent in v1 certificates.
    if tbs.first() == Some(&0xa0) {
        tbs = der_tlv(tbs, 0xa0)?.1;
    }
    let after_serial = der_tlv(tbs, 0x02)?.1;
    let after_signature = der_tlv(after_serial, SEQUENCE)?.1;
    let after_issuer = der_tlv(after_signature, SEQUENCE)?.1;
    let (period, _) = der_tlv(after_issuer, SEQUENCE)?;
    let (not_before, rest) = der_time(period)?;
    let (not_after, _) = der_time(rest)?;
    Ok((not_before, not_after))
}

/// The content of the DER element at the start of `input`, which must have
/// tag `tag`, and what follows it.
fn der_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
    let (&found, rest) = input.split_first().ok_or("truncated")?;
    if found != tag {
        return Err("unexpected element");
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
    let len = match first {
        0..=0x7f => usize::from(first),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            if rest.len() < n {
                return Err("truncated");
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b))
        }
        _ => return Err("unsupported length"),
    };
    if rest.len() < len {
        return Err("truncated");
    }
    Ok(rest.split_at(len))
}

/// A `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`), the forms RFC 5280 §4.1.2.5 allows.
fn der_time(input: &[u8]) -> Result<(i64, &[u8]), &'static str> {
    let (digits, rest, year) = match input.first() {
        Some(0x17) => {
            let (text, rest) = der_tlv(input, 0x17)?;
            let yy = two_digits(text, 0)?;
            (
                text.get(2..).ok_or("bad time")?,
                rest,
                yy + if yy < 50 { 2000 } else { 1900 },
            )
        }
        Some(0x18) => {
            let (text, rest) = der_tlv(input, 0x18)?;
            let year = two_digits(text, 0)? * 100 + two_digits(text, 2)?;
            (text.get(4..).ok_or("bad time")?, rest, year)
        }
        _ => return Err("unexpected element"),
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return Err("bad time");
    }
    let [month, day, hour, minute, second] =
        [0, 2, 4, 6, 8].map(|at| two_digits(digits, at).unwrap_or(99));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("bad time");
    }
    let days = days_from_civil(year, month, day);
    Ok((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

fn two_digits(text: &[u8], at: usize) -> Result<i64, &'static str> {
    match text.get(at..at + 2) {
        Some(&[a @ b'0'..=b'9', b @ b'0'..=b'9']) => {
            Ok(i64::from(a - b'0') * 10 + i64::from(b - b'0'))
        }
        _ => Err("bad time"),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since 1970 (H. Hinnant's
/// `civil_from_days`).
pub fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outer structure around `validity` (an encoded
    /// `Validity` SEQUENCE's content), with `version` present or not.
    fn cert(validity: &[u8], version: bool) -> Vec<u8> {
        fn element(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match content.len() {
                n @ 0..0x80 => out.push(n as u8),
                n @ 0x80..0x100 => out.extend([0x81, n as u8]),
                n => out.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            out.extend_from_slice(content);
            out
        }
        let mut tbs = Vec::new();
        if version {
            tbs.extend(element(0xa0, &element(0x02, &[2])));
        }
        tbs.extend(element(0x02, &[0x01, 0x23]));
        tbs.extend(element(0x30, &element(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(element(0x30, &[0u8; 200]));
        tbs.extend(element(0x30, validity));
        tbs.extend(element(0x30, &[]));
        let mut certificate = element(0x30, &tbs);
        certificate.extend(element(0x30, &[]));
        element(0x30, &certificate)
    }

    fn utc_time(text: &str) -> Vec<u8> {
        let mut out = vec![0x17, text.len() as u8];
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn generalized(text: &str) -> Vec<u8> {
        let mut out = vec![0x18, text.len() as u8];
        out.extend_from_slice(text.as_bytes());
        out
    }

    #[test]
    fn validity_is_read_from_both_time_forms() {
        let mut period = utc_time("260102030405Z");
        period.extend(generalized("20500101000000Z"));
        assert_eq!(
            validity(&cert(&period, true)),
            Ok((1_767_323_045, 2_524_608_000))
        );
        // UTCTime years 50–99 are 1950–1999 (RFC 5280 §4.1.2.5.1).
        let mut period = utc_time("700101000000Z");
        period.extend(utc_time("491231235959Z"));
        assert_eq!(validity(&cert(&period, false)), Ok((0, 2_524_607_999)));
    }

    #[test]
    fn validity_refuses_what_it_does_not_expect() {
        let good = {
            let mut p = utc_time("260102030405Z");
            p.extend(utc_time("270102030405Z"));
            p
        };
        let table: [(&str, Vec<u8>); 7] = [
            ("empty", Vec::new()),
            ("not a sequence", vec![0x04, 0x00]),
            ("truncated", cert(&good, true)[..40].to_vec()),
            ("local time, no Z", {
                let mut p = utc_time("2601020304050");
                p.extend(utc_time("270102030405Z"));
                cert(&p, true)
            }),
            ("month 13", {
                let mut p = utc_time("261302030405Z");
                p.extend(utc_time("270102030405Z"));
                cert(&p, true)
            }),
            ("one time only", cert(&utc_time("260102030405Z"), true)),
            ("an integer for a time", {
                let mut p = vec![0x02, 0x01, 0x00];
                p.extend(utc_time("270102030405Z"));
                cert(&p, true)
            }),
        ];
        for (name, der) in table {
            assert!(validity(&der).is_err(), "{name}");
        }
    }

    #[test]
    fn dates_round_trip() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_767_323_045, "2026-01-02 03:04:05 UTC"),
            (4_107_542_399, "2100-02-28 23:59:59 UTC"),
        ] {
            assert_eq!(utc(secs), text);
            let d = text.as_bytes();
            let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
            assert_eq!(d[4], b'-');
            assert_eq!(
                days_from_civil(n(0..4), n(5..7), n(8..10)) * 86_400
                    + n(11..13) * 3600
                    + n(14..16) * 60
                    + n(17..19),
                secs
            );
        }
    }
}
