//! A real SMTP server over TCP, in process: enough of RFC 5321 (EHLO, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT) and of PIPELINING (RFC 2920) for the worker,
//! recording every accepted message.
//! It can be switched "down": it then answers 421 and closes, like a server
//! that is restarting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the sink secures its sessions.
#[derive(Clone)]
pub enum SinkTls {
    None,
    /// Offers STARTTLS after EHLO, with this certificate.
    StartTls(Arc<tokio_rustls::rustls::ServerConfig>),
    /// TLS from the first byte (port 465 style).
    Implicit(Arc<tokio_rustls::rustls::ServerConfig>),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: Vec<u8>,
}

impl Received {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message")
    }
}

#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<Received>>>,
    down: Arc<AtomicBool>,
    delay: Arc<Mutex<Duration>>,
    /// While set, `MAIL FROM` is not answered: a client stuck here has sent no message yet.
    stall: Arc<AtomicBool>,
    stalled: Arc<std::sync::atomic::AtomicUsize>,
    /// Addresses refused for good at `RCPT TO` (550), lower-cased.
    refused: Arc<Mutex<Vec<String>>>,
    tls: SinkTls,
    /// Whether `EHLO` offers PIPELINING (it does unless told otherwise).
    offer_pipelining: Arc<AtomicBool>,
    /// Envelopes whose `MAIL FROM` came with the commands after it in the same read: pipelined.
    pub pipelined: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS handshakes that failed (the client refused the certificate, say).
    pub handshake_failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_tls(SinkTls::None).await
    }

    pub async fn start_tls(tls: SinkTls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the SMTP sink");
        let port = listener.local_addr().unwrap().port();
        let sink = Self {
            tls,
            handshake_failures: Arc::default(),
            port,
            messages: Arc::default(),
            down: Arc::default(),
            delay: Arc::default(),
            stall: Arc::default(),
            stalled: Arc::default(),
            refused: Arc::default(),
            offer_pipelining: Arc::new(AtomicBool::new(true)),
            pipelined: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(s.clone().session(stream));
            }
        });
        sink
    }

    /// Whether `EHLO` offers PIPELINING from the next connection on.
    pub fn set_pipelining(&self, offer: bool) {
        self.offer_pipelining.store(offer, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes the server slow to accept each message's data.
    /// Holds every client at `MAIL FROM` (before any message is sent) until cleared.
    pub fn set_stall(&self, stall: bool) {
        self.stall.store(stall, Ordering::SeqCst);
    }

    /// How many clients have waited at a stalled `MAIL FROM`.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }

    /// Refuses mail to `address` from now on with a permanent 550.
    pub fn refuse(&self, address: &str) {
        self.refused.lock().unwrap().push(address.to_ascii_lowercase());
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` messages arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn session(self, stream: TcpStream) {
        match self.tls.clone() {
            SinkTls::None => {
                self.converse(stream, false, true).await;
            }
            SinkTls::Implicit(config) => {
                if let Some(tls) = self.handshake(&config, stream).await {
                    self.converse(tls, false, true).await;
                }
            }
            SinkTls::StartTls(config) => {
                if let Some(plain) = self.converse(stream, true, true).await
                    && let Some(tls) = self.handshake(&config, plain).await
                {
                    self.converse(tls, false, false).await;
                }
            }
        }
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        config: &Arc<tokio_rustls::rustls::ServerConfig>,
        stream: S,
    ) -> Option<tokio_rustls::server::TlsStream<S>> {
        match tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream).await {
            Ok(tls) => Some(tls),
            Err(_) => {
                self.handshake_failures.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// One SMTP conversation on `stream`; with `offer_starttls`, returns the
    /// stream when the client asks to start TLS. `greet`: send the 220 banner
    /// (not again after STARTTLS).
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        offer_starttls: bool,
        greet: bool,
    ) -> Option<S> {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read);
        let down = || self.down.load(Ordering::SeqCst);
        if down() {
            let _ = write.write_all(b"421 4.3.2 sink is down\r\n").await;
            return None;
        }
        if greet {
            let _ = write.write_all(b"220 sink.test ESMTP\r\n").await;
        }
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return None;
            }
            if down() {
                let _ = write.write_all(b"421 4.3.2 sink is down\r\n").await;
                return None;
            }
            let upper = line.trim_end().to_ascii_uppercase();
            if upper.starts_with("MAIL FROM") && !lines.buffer().is_empty() {
                self.pipelined.fetch_add(1, Ordering::SeqCst);
            }
            let ehlo = [
                "250-sink.test\r\n",
                if offer_starttls { "250-STARTTLS\r\n" } else { "" },
                if self.offer_pipelining.load(Ordering::SeqCst) {
                    "250-PIPELINING\r\n"
                } else {
                    ""
                },
                "250-8BITMIME\r\n250 SMTPUTF8\r\n",
            ]
            .concat();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                ehlo.as_bytes()
            } else if upper == "STARTTLS" && offer_starttls {
                let _ = write.write_all(b"220 2.0.0 ready to start TLS\r\n").await;
                return Some(lines.into_inner().unsplit(write));
            } else if upper.starts_with("MAIL FROM") && self.stall.load(Ordering::SeqCst) {
                self.stalled.fetch_add(1, Ordering::SeqCst);
                while self.stall.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                b"250 2.0.0 ok\r\n"
            } else if upper.starts_with("HELO") || upper.starts_with("MAIL FROM") || upper == "NOOP" {
                b"250 2.0.0 ok\r\n"
            } else if upper.starts_with("RSET") {
                rcpt.clear();
                b"250 2.0.0 ok\r\n"
            } else if upper.starts_with("RCPT TO:") {
                let addr = line.trim_end()[8..].trim().trim_start_matches('<');
                let addr = addr.split('>').next().unwrap_or_default().to_ascii_lowercase();
                if self.refused.lock().unwrap().contains(&addr) {
                    b"550 5.1.1 mailbox unavailable\r\n"
                } else {
                    rcpt.push(addr);
                    b"250 2.1.5 ok\r\n"
                }
            } else if upper == "DATA" {
                let _ = write.write_all(b"354 go ahead\r\n").await;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return None;
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let body = line.strip_prefix('.').unwrap_or(&line);
                    data.extend_from_slice(body.as_bytes());
                }
                let delay = *self.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                if down() {
                    let _ = write.write_all(b"421 4.3.2 sink is down\r\n").await;
                    return None;
                }
                self.messages.lock().unwrap().push(Received {
                    rcpt: std::mem::take(&mut rcpt),
                    data,
                });
                b"250 2.0.0 queued\r\n"
            } else if upper == "QUIT" {
                let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                return None;
            } else {
                b"502 5.5.2 not implemented\r\n"
            };
            if write.write_all(reply).await.is_err() {
                return None;
            }
        }
    }
}
