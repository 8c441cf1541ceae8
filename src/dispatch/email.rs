//! Email out: rendered MIME messages sent over pooled SMTP connections, or
//! written as `.eml` files when no SMTP host is configured.
//!
//! [`Mailer::deliver`] is the one way an email goes out, for events and
//! digests alike: stage the envelope (`MAIL`, `RCPT`, `DATA`; many at once, up
//! to `smtp.pool_max_size`), take a turn, check the send is still this
//! worker's, send the content, and record it before giving the turn back, so
//! at most `smtp.max_in_flight` messages are ever accepted by the server but
//! not yet recorded. [`Letterhead::compose`] turns a rendered email into the
//! MIME message, the same way for both.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::address::Envelope;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::smtp::{Connection, Stream, Tls};

use crate::config::{Smtp, SmtpTls};
use crate::error::Failure;
use crate::event::EventId;
use crate::render::{ListUnsubscribe, RenderedEmail, Sender, build_email, message_id};
use crate::route::Recipient;
use crate::store::StoreError;

/// Why a message did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: the server is down, busy, or said 4xx.
    #[error("transient: {0}")]
    Transient(String),
    /// The server refused for good (5xx), or the message cannot be built.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Transient(e) => Failure::Mail(e),
            SendError::Permanent(e) => Failure::Permanent(e),
        }
    }
}

/// What every email of the router carries besides its content: who it is
/// from, and where an optional one is unsubscribed from.
#[derive(Clone, Debug)]
pub struct Letterhead {
    pub sender: Sender,
    pub unsubscribe: Unsubscribe,
}

/// Where an optional email's `List-Unsubscribe` points.
#[derive(Clone, Debug)]
pub enum Unsubscribe {
    /// Each recipient's signed link, served by this worker: one click (RFC 8058) stops it.
    OneClick(crate::preferences::Links),
    /// One page for everyone (`mail.unsubscribe_url`), where people manage their settings.
    Page(String),
}

impl Letterhead {
    /// As the settings say: the sender, and signed one-click links when
    /// `http.public_url` is set, else `mail.unsubscribe_url`.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        Ok(Self {
            sender: Sender::from_settings(&settings.mail)?,
            unsubscribe: match settings.http.preference_links() {
                Some(links) => Unsubscribe::OneClick(links),
                None => Unsubscribe::Page(settings.mail.unsubscribe_url.clone()),
            },
        })
    }

    /// The MIME message for `email` to `to`, and its Message-ID, stable for
    /// (`cause`, `notification`, recipient). `optional` notifications carry
    /// `List-Unsubscribe`, and with signed links `List-Unsubscribe-Post` too.
    pub fn compose(
        &self,
        email: &RenderedEmail,
        notification: &str,
        optional: bool,
        to: &Recipient,
        cause: &str,
    ) -> Result<(Message, String), Failure> {
        let id = message_id(
            &EventId::new(cause),
            notification,
            &to.email,
            self.sender.from.email.domain(),
        );
        let unsubscribe = optional.then(|| match &self.unsubscribe {
            Unsubscribe::OneClick(links) => ListUnsubscribe {
                url: links.url(to.email.as_str(), notification),
                one_click: true,
            },
            Unsubscribe::Page(url) => ListUnsubscribe {
                url: url.clone(),
                one_click: false,
            },
        });
        let message = build_email(email, &self.sender, to, &id, unsubscribe.as_ref(), cause)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        Ok((message, id))
    }
}

/// Where messages go.
pub struct Mailer {
    transport: Transport,
    /// Turns to finish a send: `smtp.max_in_flight`. A message the server
    /// accepted just before this worker died is sent again when its event is
    /// taken over (with the same Message-ID): the bound on those duplicates
    /// per crash is this number.
    in_flight: Semaphore,
}

enum Transport {
    Smtp(Box<Pool>),
    /// The outbox folder.
    Files(std::path::PathBuf),
}

impl Mailer {
    pub fn from_settings(smtp: &Smtp) -> Result<Self, String> {
        let transport = if smtp.host.is_empty() {
            std::fs::create_dir_all(&smtp.outbox_dir)
                .map_err(|e| format!("smtp.outbox_dir {}: {e}", smtp.outbox_dir.display()))?;
            Transport::Files(smtp.outbox_dir.clone())
        } else {
            Transport::Smtp(Box::new(Pool::new(smtp)?))
        };
        Ok(Self {
            transport,
            in_flight: Semaphore::new(smtp.max_in_flight.max(1)),
        })
    }

    /// A place among the messages going out at once (`smtp.pool_max_size`),
    /// one per SMTP connection. Taken before a message is rendered, it keeps
    /// the messages held in memory to the number of connections, however many
    /// events are in flight.
    pub async fn slot(&self) -> Result<Slot<'_>, SendError> {
        match &self.transport {
            Transport::Smtp(pool) => pool
                .slots
                .acquire()
                .await
                .map(|permit| Slot { _permit: Some(permit) })
                .map_err(|e| SendError::Transient(e.to_string())),
            Transport::Files(_) => Ok(Slot { _permit: None }),
        }
    }

    /// Sends `message` in a slot of its own: see [`Mailer::deliver_in`].
    pub async fn deliver(
        &self,
        message: Message,
        still_ours: impl Future<Output = Result<bool, StoreError>>,
        record: impl Future<Output = Result<(), StoreError>>,
    ) -> Result<(), Failure> {
        let slot = self.slot().await?;
        self.deliver_in(slot, message, still_ours, record).await
    }

    /// Sends `message` in `slot`: stages it, takes a turn, asks `still_ours`
    /// whether it may still go (`false`: another worker took it over, nothing
    /// is sent, and the answer is [`Failure::TakenOver`]), sends the content
    /// and runs `record` before the turn is given back. Both are futures, run
    /// only when their step comes.
    pub async fn deliver_in(
        &self,
        slot: Slot<'_>,
        message: Message,
        still_ours: impl Future<Output = Result<bool, StoreError>>,
        record: impl Future<Output = Result<(), StoreError>>,
    ) -> Result<(), Failure> {
        let staged = self.stage(slot, message).await?;
        let turn = self.turn().await?;
        // Staging and the wait for a turn can be long: the send must still be ours.
        if !still_ours.await? {
            return Err(Failure::TakenOver);
        }
        staged.finish().await?;
        record.await?;
        drop(turn);
        Ok(())
    }

    /// A turn to finish a send: hold it until the send is recorded.
    async fn turn(&self) -> Result<SemaphorePermit<'_>, SendError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|e| SendError::Transient(e.to_string()))
    }

    /// Takes a connection and sends the envelope; the content follows with [`Staged::finish`].
    async fn stage<'a>(&'a self, slot: Slot<'a>, message: Message) -> Result<Staged<'a>, SendError> {
        match &self.transport {
            Transport::Smtp(pool) => pool.stage(slot, message).await,
            Transport::Files(dir) => Ok(Staged::File { dir, message }),
        }
    }
}

/// A place among the messages going out at once; see [`Mailer::slot`].
pub struct Slot<'a> {
    /// Held, not read: the place is given back when the slot is dropped.
    _permit: Option<SemaphorePermit<'a>>,
}

/// A message whose envelope the server has taken, waiting to send its content.
/// Dropped unfinished, its connection is closed and the server discards it.
enum Staged<'a> {
    Smtp {
        pool: &'a Pool,
        connection: Box<Connection>,
        content: Vec<u8>,
        _slot: Slot<'a>,
    },
    File {
        dir: &'a std::path::Path,
        message: Message,
    },
}

impl Staged<'_> {
    /// Sends the content; `Ok` once the server has accepted the message.
    async fn finish(self) -> Result<(), SendError> {
        match self {
            Staged::Smtp {
                pool,
                mut connection,
                content,
                _slot,
            } => {
                pool.timed(connection.content(&content)).await?;
                pool.put_back(*connection);
                Ok(())
            }
            Staged::File { dir, message } => {
                let path = dir.join(file_name(&message));
                tokio::fs::write(&path, message.formatted())
                    .await
                    .map_err(|e| SendError::Transient(format!("writing {}: {e}", path.display())))
            }
        }
    }
}

/// An outbox file's name a person can find: `EVENT.NOTIFICATION.RECIPIENT.eml`
/// (`evt-lead-1.lead-generated.dana@fabrikam.example.eml`). The same delivery
/// always has the same name, so writing it again replaces it.
fn file_name(message: &Message) -> String {
    let headers = message.headers();
    let part = |name: &str| headers.get_raw(name).unwrap_or("unknown").to_string();
    let to = message
        .envelope()
        .to()
        .first()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string().to_ascii_lowercase());
    let name = format!("{}.{}.{to}", part("X-Router-Event"), part("X-Router-Notification"));
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("{safe}.eml")
}

/// SMTP connections: at most `smtp.pool_max_size` open; an idle one older than
/// `smtp.pool_idle_timeout` (at most 50 s) is closed when the next send looks
/// for a connection. Connections are opened with `TCP_NODELAY`: each write is
/// a whole step of the conversation (an envelope, a message with its final
/// dot), and none should wait for the server's delayed acknowledgement.
struct Pool {
    host: String,
    port: u16,
    tls: SmtpTls,
    parameters: Option<Tls>,
    /// What the server's certificate is checked against, for error messages.
    trust: String,
    /// User name and password, when the server wants a login.
    credentials: Option<(String, String)>,
    hello: String,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(Connection, Instant)>>,
    slots: Semaphore,
}

impl Pool {
    fn new(smtp: &Smtp) -> Result<Self, String> {
        let parameters = match smtp.tls {
            SmtpTls::None => None,
            SmtpTls::Tls | SmtpTls::Starttls => Some(Tls::new(&smtp.host, &smtp.tls_ca_file)?),
        };
        Ok(Self {
            host: smtp.host.clone(),
            port: smtp.port,
            tls: smtp.tls,
            parameters,
            trust: crate::config::trust("smtp.tls_ca_file", &smtp.tls_ca_file),
            credentials: (!smtp.username.is_empty())
                .then(|| (smtp.username.clone(), smtp.password.expose().to_string())),
            hello: super::smtp::hello_name(),
            timeout: smtp.timeout,
            // Closed by us before the server closes them (most do after about a minute).
            idle_timeout: smtp.pool_idle_timeout.min(Duration::from_secs(50)),
            idle: Mutex::default(),
            slots: Semaphore::new((smtp.pool_max_size as usize).max(1)),
        })
    }

    async fn stage<'a>(&'a self, slot: Slot<'a>, message: Message) -> Result<Staged<'a>, SendError> {
        let envelope = message.envelope().clone();
        let content = message.formatted();
        // What goes out from here on is `content`.
        drop(message);
        let envelope = &envelope;
        let connection = match self.take_idle() {
            // A pooled connection the server has since closed fails at once: try a new one.
            Some(mut pooled) => match self.envelope(&mut pooled, envelope, &content).await {
                Ok(()) => pooled,
                Err(SendError::Transient(_)) => self.envelope_on_new(envelope, &content).await?,
                Err(e) => return Err(e),
            },
            None => self.envelope_on_new(envelope, &content).await?,
        };
        Ok(Staged::Smtp {
            pool: self,
            connection: Box::new(connection),
            content,
            _slot: slot,
        })
    }

    async fn envelope_on_new(&self, envelope: &Envelope, content: &[u8]) -> Result<Connection, SendError> {
        let mut connection = self.connect().await?;
        self.envelope(&mut connection, envelope, content).await?;
        Ok(connection)
    }

    /// `MAIL FROM`, `RCPT TO` for each recipient, `DATA`.
    async fn envelope(
        &self,
        connection: &mut Connection,
        envelope: &Envelope,
        content: &[u8],
    ) -> Result<(), SendError> {
        let from = envelope.from().map_or("", |a| a.as_ref());
        let to: Vec<&str> = envelope.to().iter().map(|a| a.as_ref()).collect();
        let mut parameters = String::new();
        if !from.is_ascii() || to.iter().any(|a| !a.is_ascii()) {
            if !connection.extensions.smtp_utf8 {
                return Err(SendError::Permanent(
                    "a non-ASCII address, and the server has no SMTPUTF8".into(),
                ));
            }
            parameters.push_str(" SMTPUTF8");
        }
        if !content.is_ascii() {
            if !connection.extensions.eight_bit_mime {
                return Err(SendError::Permanent(
                    "non-ASCII content, and the server has no 8BITMIME".into(),
                ));
            }
            parameters.push_str(" BODY=8BITMIME");
        }
        self.timed(connection.envelope(from, &to, &parameters)).await
    }

    async fn connect(&self) -> Result<Connection, SendError> {
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| SendError::Transient(format!("connecting to {}:{}: timed out", self.host, self.port)))?
        .map_err(|e| SendError::Transient(format!("connecting to {}:{}: {e}", self.host, self.port)))?;
        tcp.set_nodelay(true)
            .map_err(|e| SendError::Transient(format!("TCP_NODELAY: {e}")))?;
        let mut connection = match (&self.tls, &self.parameters) {
            (SmtpTls::Tls, Some(tls)) => {
                let stream = self.timed(tls.handshake(tcp)).await.map_err(|e| self.tls_failure(e))?;
                self.timed(Connection::open(stream, &self.hello)).await?
            }
            (SmtpTls::Starttls, Some(tls)) => {
                let plain = self.timed(Connection::open(Stream::Plain(tcp), &self.hello)).await?;
                self.timed(plain.starttls(tls)).await.map_err(|e| self.tls_failure(e))?
            }
            _ => self.timed(Connection::open(Stream::Plain(tcp), &self.hello)).await?,
        };
        if let Some((username, password)) = &self.credentials {
            self.timed(connection.auth(username, password)).await?;
        }
        Ok(connection)
    }

    /// A failed TLS handshake, saying which server, which name its
    /// certificate must carry and what it was checked against. Transient: the
    /// messages wait (and are retried) until the relay or the trust is fixed.
    fn tls_failure(&self, e: SendError) -> SendError {
        let (SendError::Transient(why) | SendError::Permanent(why)) = e;
        SendError::Transient(format!(
            "TLS with the SMTP server {}:{} failed (its certificate must name `{}`; trusted: {}): {why}",
            self.host, self.port, self.host, self.trust
        ))
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first; the stale ones are dropped (closing their sockets).
        idle.retain(|(_, since)| since.elapsed() < self.idle_timeout);
        idle.pop().map(|(connection, _)| connection)
    }

    fn put_back(&self, connection: Connection) {
        if connection.is_usable() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push((connection, Instant::now()));
        }
    }

    /// One step of the conversation, bounded by `smtp.timeout`.
    async fn timed<T>(&self, step: impl Future<Output = Result<T, SendError>>) -> Result<T, SendError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "the SMTP server did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}
