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
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::sync::{Semaphore, SemaphorePermit};

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

impl From<lettre::transport::smtp::Error> for SendError {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        if e.is_permanent() {
            Self::Permanent(e.to_string())
        } else {
            Self::Transient(e.to_string())
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

    /// Sends `message`: stages it, takes a turn, asks `still_ours` whether it
    /// may still go (`false`: another worker took it over, nothing is sent, and
    /// the answer is [`Failure::TakenOver`]), sends the content and runs
    /// `record` before the turn is given back. Both are futures, run only when
    /// their step comes.
    pub async fn deliver(
        &self,
        message: Message,
        still_ours: impl Future<Output = Result<bool, StoreError>>,
        record: impl Future<Output = Result<(), StoreError>>,
    ) -> Result<(), Failure> {
        let staged = self.stage(message).await?;
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
    async fn stage(&self, message: Message) -> Result<Staged<'_>, SendError> {
        match &self.transport {
            Transport::Smtp(pool) => pool.stage(message).await,
            Transport::Files(dir) => Ok(Staged::File { dir, message }),
        }
    }
}

/// A message whose envelope the server has taken, waiting to send its content.
/// Dropped unfinished, its connection is closed and the server discards it.
enum Staged<'a> {
    Smtp {
        pool: &'a Pool,
        connection: Box<AsyncSmtpConnection>,
        content: Vec<u8>,
        _slot: SemaphorePermit<'a>,
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
                pool.timed(connection.message(&content)).await?;
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

/// TLS for `smtp.host`: the system's trust store, plus `smtp.tls_ca_file` when set.
fn tls_parameters(smtp: &Smtp) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(smtp.host.clone());
    if !smtp.tls_ca_file.is_empty() {
        let pem = std::fs::read(&smtp.tls_ca_file)
            .map_err(|e| format!("smtp.tls_ca_file: cannot read `{}`: {e}", smtp.tls_ca_file))?;
        let certificate = Certificate::from_pem(&pem)
            .map_err(|e| format!("smtp.tls_ca_file: `{}` is not a PEM certificate: {e}", smtp.tls_ca_file))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| format!("smtp.host {}: TLS: {e}", smtp.host))
}

/// SMTP connections: at most `smtp.pool_max_size` open; an idle one older than
/// `smtp.pool_idle_timeout` (at most 50 s) is closed when the next send looks
/// for a connection. Plain and STARTTLS connections are opened with
/// `TCP_NODELAY`: the content and its final dot go out as two writes, and
/// without it the second waits for the server's delayed acknowledgement.
struct Pool {
    host: String,
    port: u16,
    tls: SmtpTls,
    parameters: Option<TlsParameters>,
    /// What the server's certificate is checked against, for error messages.
    trust: String,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    slots: Semaphore,
}

impl Pool {
    fn new(smtp: &Smtp) -> Result<Self, String> {
        let parameters = match smtp.tls {
            SmtpTls::None => None,
            SmtpTls::Tls | SmtpTls::Starttls => Some(tls_parameters(smtp)?),
        };
        Ok(Self {
            host: smtp.host.clone(),
            port: smtp.port,
            tls: smtp.tls,
            parameters,
            trust: crate::config::trust("smtp.tls_ca_file", &smtp.tls_ca_file),
            credentials: (!smtp.username.is_empty())
                .then(|| Credentials::new(smtp.username.clone(), smtp.password.expose().to_string())),
            hello: ClientId::default(),
            timeout: smtp.timeout,
            // Closed by us before the server closes them (most do after about a minute).
            idle_timeout: smtp.pool_idle_timeout.min(Duration::from_secs(50)),
            idle: Mutex::default(),
            slots: Semaphore::new((smtp.pool_max_size as usize).max(1)),
        })
    }

    async fn stage(&self, message: Message) -> Result<Staged<'_>, SendError> {
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
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

    async fn envelope_on_new(&self, envelope: &Envelope, content: &[u8]) -> Result<AsyncSmtpConnection, SendError> {
        let mut connection = self.connect().await?;
        self.envelope(&mut connection, envelope, content).await?;
        Ok(connection)
    }

    /// `MAIL FROM`, `RCPT TO` for each recipient, `DATA`.
    async fn envelope(
        &self,
        connection: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        content: &[u8],
    ) -> Result<(), SendError> {
        let info = connection.server_info();
        let mut options = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(SendError::Permanent(
                    "a non-ASCII address, and the server has no SMTPUTF8".into(),
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !content.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(SendError::Permanent(
                    "non-ASCII content, and the server has no 8BITMIME".into(),
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.timed(connection.command(Mail::new(envelope.from().cloned(), options)))
            .await?;
        for to in envelope.to() {
            self.timed(connection.command(Rcpt::new(to.clone(), Vec::new())))
                .await?;
        }
        self.timed(connection.command(Data)).await?;
        Ok(())
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let mut connection = match (&self.tls, &self.parameters) {
            (SmtpTls::Tls, parameters) => self
                .timed(AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    parameters.clone(),
                    None,
                ))
                .await
                .map_err(|e| self.tls_failure(e))?,
            (_, parameters) => {
                let stream = tokio::time::timeout(
                    self.timeout,
                    tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
                )
                .await
                .map_err(|_| SendError::Transient(format!("connecting to {}:{}: timed out", self.host, self.port)))?
                .map_err(|e| SendError::Transient(format!("connecting to {}:{}: {e}", self.host, self.port)))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| SendError::Transient(format!("TCP_NODELAY: {e}")))?;
                let mut connection = self
                    .timed(AsyncSmtpConnection::connect_with_transport(
                        Box::new(stream),
                        &self.hello,
                    ))
                    .await?;
                if let Some(parameters) = parameters {
                    self.timed(connection.starttls(parameters.clone(), &self.hello))
                        .await
                        .map_err(|e| self.tls_failure(e))?;
                }
                connection
            }
        };
        if let Some(credentials) = &self.credentials {
            self.timed(connection.auth(DEFAULT_MECHANISMS, credentials)).await?;
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

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first; the stale ones are dropped (closing their sockets).
        idle.retain(|(_, since)| since.elapsed() < self.idle_timeout);
        idle.pop().map(|(connection, _)| connection)
    }

    fn put_back(&self, connection: AsyncSmtpConnection) {
        if !connection.has_broken() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push((connection, Instant::now()));
        }
    }

    /// One step of the conversation, bounded by `smtp.timeout`.
    async fn timed<T>(
        &self,
        step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, SendError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result.map_err(SendError::from),
            Err(_) => Err(SendError::Transient(format!(
                "the SMTP server did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}
