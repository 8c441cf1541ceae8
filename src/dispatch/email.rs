//! Email out: rendered MIME messages sent through a pooled SMTP transport,
//! or written as `.eml` files when no SMTP host is configured.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{Smtp, SmtpTls};

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

/// Where messages go.
pub struct Mailer {
    transport: Transport,
    /// SMTP transactions awaiting the server's reply: at most `smtp.max_in_flight`,
    /// and never more than `smtp.pool_max_size` (lettre's pool bounds only idle
    /// connections, so more concurrent sends would each open one of their own).
    /// A message the server accepted just before this worker died is sent again
    /// when its event is taken over (with the same Message-ID): the bound on
    /// those duplicates per crash is this number.
    in_flight: tokio::sync::Semaphore,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    pub fn from_settings(smtp: &Smtp) -> Result<Self, String> {
        if smtp.host.is_empty() {
            std::fs::create_dir_all(&smtp.outbox_dir)
                .map_err(|e| format!("smtp.outbox_dir {}: {e}", smtp.outbox_dir.display()))?;
            return Ok(Self::new(
                Transport::Files(AsyncFileTransport::new(&smtp.outbox_dir)),
                smtp,
            ));
        }
        let builder = match smtp.tls {
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)),
        }
        .map_err(|e| format!("smtp.host {}: {e}", smtp.host))?;
        // Idle connections are closed by us before the server closes them
        // (lettre issue 743: a pooled connection the server dropped fails the next send).
        let idle = smtp.pool_idle_timeout.min(Duration::from_secs(50));
        let mut builder = builder
            .port(smtp.port)
            .timeout(Some(smtp.timeout))
            .pool_config(PoolConfig::new().max_size(smtp.pool_max_size).idle_timeout(idle));
        if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.expose().to_string(),
            ));
        }
        Ok(Self::new(Transport::Smtp(builder.build()), smtp))
    }

    fn new(transport: Transport, smtp: &Smtp) -> Self {
        Self {
            transport,
            in_flight: tokio::sync::Semaphore::new(smtp.max_in_flight.min(smtp.pool_max_size as usize).max(1)),
        }
    }

    /// A turn to send: hold it until the send is recorded, so at most
    /// `smtp.max_in_flight` messages are ever accepted-but-unrecorded.
    pub async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SendError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|e| SendError::Transient(e.to_string()))
    }

    /// Sends one message; callers hold a [`Mailer::turn`] across the send and its record.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        match &self.transport {
            Transport::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                }
            }),
            Transport::Files(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}
