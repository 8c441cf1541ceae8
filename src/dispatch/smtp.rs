//! One SMTP client connection (RFC 5321): the greeting and `EHLO`,
//! `STARTTLS`, `AUTH PLAIN`/`LOGIN`, and per message an envelope (`MAIL`,
//! `RCPT`, `DATA`) and its content.
//!
//! Where the server offers `PIPELINING` (RFC 2920), the envelope goes out as
//! one write and its replies are read together; the content and its final dot
//! are always one write. So a message costs the connection two round trips,
//! where one write and one reply per command cost four or more.
//!
//! A connection that fails in the middle of a message is marked broken and
//! must be dropped: closing it makes the server discard what it has so far.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use super::email::SendError;

/// Longest reply accepted, all lines together.
const MAX_REPLY: usize = 16 * 1024;

/// The byte stream under a connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// Asks the kernel to acknowledge what arrives next at once. A server that
    /// answers a pipelined envelope with one small write per reply, with
    /// Nagle's algorithm on, holds the second reply until the first is
    /// acknowledged, and Linux delays that acknowledgement (up to 40 ms) while
    /// the client has nothing to send. The flag does not last, so it is set
    /// after each write.
    fn acknowledge_promptly(&self) {
        #[cfg(target_os = "linux")]
        {
            let tcp = match self {
                Stream::Plain(s) => s,
                Stream::Tls(s) => s.get_ref().0,
            };
            let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        }
    }
}

/// TLS to `host`: the system's trust store, plus the certificates of `ca_file`
/// (PEM) when it is not empty. What a handshake is checked against.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    pub fn new(host: &str, ca_file: &str) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if !ca_file.is_empty() {
            let pem = std::fs::read(ca_file).map_err(|e| format!("smtp.tls_ca_file: cannot read `{ca_file}`: {e}"))?;
            let not_pem =
                |e: &dyn std::fmt::Display| format!("smtp.tls_ca_file: `{ca_file}` is not a PEM certificate: {e}");
            let mut added = 0;
            for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| not_pem(&e))?;
                roots.add(certificate).map_err(|e| not_pem(&e))?;
                added += 1;
            }
            if added == 0 {
                return Err(not_pem(&"it holds no certificate"));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("smtp.host {host}: TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("smtp.host {host}: TLS: {e}"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The handshake over `tcp`.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<Stream, SendError> {
        let stream = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// What the server said it supports, from its `EHLO` reply.
#[derive(Debug, Default)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
    pub starttls: bool,
    /// `AUTH` mechanisms, upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Self {
        let mut extensions = Self::default();
        // The first line is the server's name; each further line is one keyword and its parameters.
        for line in reply.text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("PIPELINING") => extensions.pipelining = true,
                Some("8BITMIME") => extensions.eight_bit_mime = true,
                Some("SMTPUTF8") => extensions.smtp_utf8 = true,
                Some("STARTTLS") => extensions.starttls = true,
                Some("AUTH") => extensions.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        extensions
    }
}

/// A reply: its code and its text, one line per line of the reply.
#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn is(&self, class: u16) -> bool {
        self.code / 100 == class
    }

    /// The reply as the reason a message did not go: 5xx is for good, anything else may pass.
    fn failure(&self, after: &str) -> SendError {
        let text = self.text.replace('\n', " ");
        if self.is(5) {
            SendError::Permanent(format!("permanent error ({}) after {after}: {text}", self.code))
        } else {
            SendError::Transient(format!("transient error ({}) after {after}: {text}", self.code))
        }
    }
}

fn network(e: std::io::Error) -> SendError {
    SendError::Transient(format!("network error: {e}"))
}

/// An open conversation with the server, between messages.
pub struct Connection {
    stream: BufReader<Stream>,
    pub extensions: Extensions,
    hello: String,
    /// What goes out next, kept to be reused.
    out: Vec<u8>,
    broken: bool,
}

impl Connection {
    /// Reads the server's greeting on `stream` and introduces this client as `hello`.
    pub async fn open(stream: Stream, hello: &str) -> Result<Self, SendError> {
        let mut connection = Self::on(stream, hello.to_string(), Vec::new());
        let greeting = connection.reply().await?;
        if !greeting.is(2) {
            return Err(greeting.failure("connecting"));
        }
        connection.ehlo().await?;
        Ok(connection)
    }

    fn on(stream: Stream, hello: String, out: Vec<u8>) -> Self {
        Self {
            stream: BufReader::new(stream),
            extensions: Extensions::default(),
            hello,
            out,
            broken: false,
        }
    }

    async fn ehlo(&mut self) -> Result<(), SendError> {
        let line = format!("EHLO {}", self.hello);
        let reply = self.command(&line, 2, "EHLO").await?;
        self.extensions = Extensions::from_ehlo(&reply);
        Ok(())
    }

    /// `STARTTLS`, the handshake, and `EHLO` again over TLS.
    pub async fn starttls(mut self, tls: &Tls) -> Result<Self, SendError> {
        if !self.extensions.starttls {
            return Err(SendError::Transient("the server does not offer STARTTLS".into()));
        }
        self.command("STARTTLS", 2, "STARTTLS").await?;
        // Nothing may come before the handshake: bytes the server sent ahead would be taken as sent under TLS.
        if !self.stream.buffer().is_empty() {
            return Err(SendError::Transient(
                "the server sent data before the TLS handshake".into(),
            ));
        }
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            return Err(SendError::Transient(
                "STARTTLS on a connection already under TLS".into(),
            ));
        };
        let mut connection = Self::on(tls.handshake(tcp).await?, self.hello, self.out);
        connection.ehlo().await?;
        Ok(connection)
    }

    /// Logs in with `AUTH PLAIN`, or `AUTH LOGIN` where the server offers only that.
    pub async fn auth(&mut self, username: &str, password: &str) -> Result<(), SendError> {
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let offers = |m: &str| self.extensions.auth.iter().any(|a| a == m);
        if offers("PLAIN") {
            let token = b64(format!("\0{username}\0{password}").as_bytes());
            self.command(&format!("AUTH PLAIN {token}"), 2, "AUTH PLAIN").await?;
        } else if offers("LOGIN") {
            self.command("AUTH LOGIN", 3, "AUTH LOGIN").await?;
            self.command(&b64(username.as_bytes()), 3, "AUTH LOGIN").await?;
            self.command(&b64(password.as_bytes()), 2, "AUTH LOGIN").await?;
        } else {
            return Err(SendError::Transient(format!(
                "the server offers no login this client knows (PLAIN, LOGIN); it offers: {}",
                self.extensions.auth.join(" ")
            )));
        }
        Ok(())
    }

    /// `MAIL FROM` (with `parameters`, e.g. ` BODY=8BITMIME`), one `RCPT TO`
    /// per recipient, and `DATA`: in one write when the server pipelines.
    pub async fn envelope(&mut self, from: &str, to: &[&str], parameters: &str) -> Result<(), SendError> {
        let mail = format!("MAIL FROM:<{from}>{parameters}");
        if !self.extensions.pipelining {
            self.command(&mail, 2, "MAIL FROM").await?;
            for to in to {
                self.command(&format!("RCPT TO:<{to}>"), 2, "RCPT TO").await?;
            }
            self.command("DATA", 3, "DATA").await?;
            return Ok(());
        }
        self.out.clear();
        self.out.extend_from_slice(mail.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        for to in to {
            self.out.extend_from_slice(b"RCPT TO:<");
            self.out.extend_from_slice(to.as_bytes());
            self.out.extend_from_slice(b">\r\n");
        }
        self.out.extend_from_slice(b"DATA\r\n");
        self.flush_out().await?;
        // Every reply is read, so the first refusal is the one named.
        let mut refused = None;
        for (step, class) in std::iter::once(("MAIL FROM", 2))
            .chain(to.iter().map(|_| ("RCPT TO", 2)))
            .chain(std::iter::once(("DATA", 3)))
        {
            let reply = self.reply().await?;
            if !reply.is(class) && refused.is_none() {
                refused = Some(reply.failure(step));
            }
        }
        match refused {
            // A server may still have said 354 to DATA: the connection is mid-message.
            Some(e) => {
                self.broken = true;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The message itself after `DATA`, its lines starting with a dot doubled,
    /// and the final dot, in one write; `Ok` once the server accepted it.
    pub async fn content(&mut self, content: &[u8]) -> Result<(), SendError> {
        self.out.clear();
        data(content, &mut self.out);
        self.flush_out().await?;
        let reply = self.reply().await?;
        if !reply.is(2) {
            self.broken = true;
            return Err(reply.failure("the message content"));
        }
        Ok(())
    }

    /// Whether the connection may carry another message.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// One command and its reply, which must be of `class` (2: 2xx, 3: 3xx).
    async fn command(&mut self, line: &str, class: u16, step: &str) -> Result<Reply, SendError> {
        self.out.clear();
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.flush_out().await?;
        let reply = self.reply().await?;
        if !reply.is(class) {
            self.broken = true;
            return Err(reply.failure(step));
        }
        Ok(reply)
    }

    async fn flush_out(&mut self) -> Result<(), SendError> {
        let stream = self.stream.get_mut();
        let written = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        written.await.map_err(|e| {
            self.broken = true;
            network(e)
        })?;
        self.stream.get_ref().acknowledge_promptly();
        Ok(())
    }

    /// One reply, all its lines (`250-…` continues, `250 …` ends it).
    async fn reply(&mut self) -> Result<Reply, SendError> {
        let mut text = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = self.stream.read_until(b'\n', &mut line).await.map_err(|e| {
                self.broken = true;
                network(e)
            })?;
            if read == 0 {
                self.broken = true;
                return Err(SendError::Transient("the SMTP server closed the connection".into()));
            }
            let parsed = std::str::from_utf8(&line).ok().and_then(|l| {
                let l = l.trim_end_matches(['\r', '\n']);
                let code = l.get(..3)?.parse::<u16>().ok().filter(|c| (200..600).contains(c))?;
                let last = match l.as_bytes().get(3) {
                    None | Some(b' ') => true,
                    Some(b'-') => false,
                    Some(_) => return None,
                };
                Some((code, last, l.get(4..).unwrap_or_default().to_string()))
            });
            let Some((code, last, words)) = parsed else {
                self.broken = true;
                return Err(SendError::Transient(format!(
                    "the SMTP server sent something that is not a reply: {:?}",
                    String::from_utf8_lossy(&line)
                )));
            };
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&words);
            if text.len() > MAX_REPLY {
                self.broken = true;
                return Err(SendError::Transient("the SMTP server's reply is too long".into()));
            }
            if last {
                return Ok(Reply { code, text });
            }
        }
    }
}

/// `content` as it goes after `DATA` into `out`: each line that starts with a
/// dot gets a second one (the server takes it off), then the line with only a dot.
fn data(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + 8);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// This host's name for `EHLO`, or `localhost` when it has none that fits.
pub fn hello_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_get_a_second_and_the_end_is_one_dot_alone() {
        let mut out = Vec::new();
        data(b".hidden\r\nplain .dot\r\n..two\r\nlast", &mut out);
        assert_eq!(out, b"..hidden\r\nplain .dot\r\n...two\r\nlast\r\n.\r\n");
        out.clear();
        data(b"ends well\r\n", &mut out);
        assert_eq!(out, b"ends well\r\n.\r\n");
    }

    #[test]
    fn ehlo_keywords_are_read_from_every_line_but_the_first() {
        let reply = Reply {
            code: 250,
            text: "sink.test greets you\npipelining\n8BITMIME\nAUTH login Plain\nSIZE 1000".into(),
        };
        let e = Extensions::from_ehlo(&reply);
        assert!(e.pipelining && e.eight_bit_mime && !e.smtp_utf8 && !e.starttls);
        assert_eq!(e.auth, ["LOGIN", "PLAIN"]);
    }
}
