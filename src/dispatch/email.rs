//! Email out: a multipart/alternative message with a stable `Message-ID`,
//! sent through a pooled SMTP transport, or written as `.eml` files when no
//! SMTP host is configured.

use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::EmailContent;
use crate::config::{Mail, Smtp, SmtpTls};
use crate::route::Delivery;

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
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    pub fn from_settings(smtp: &Smtp) -> Result<Self, String> {
        if smtp.host.is_empty() {
            std::fs::create_dir_all(&smtp.outbox_dir)
                .map_err(|e| format!("smtp.outbox_dir {}: {e}", smtp.outbox_dir.display()))?;
            return Ok(Mailer::Files(AsyncFileTransport::new(&smtp.outbox_dir)));
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
        Ok(Mailer::Smtp(builder.build()))
    }

    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        match self {
            Mailer::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                }
            }),
            Mailer::Files(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}

/// `<hash@domain>`: the same (event, notification, recipient) always gives the
/// same id, so a duplicate that slips through a crash window is detectable downstream.
pub fn message_id(event_id: &str, notification: &str, recipient_key: &str, domain: &str) -> String {
    let mut h = Sha256::new();
    for part in [event_id, notification, recipient_key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@{domain}>")
}

/// Builds the MIME message for one delivery.
pub fn build(
    mail: &Mail,
    event_id: &str,
    delivery: &Delivery,
    content: &EmailContent,
    optional: bool,
) -> Result<(Message, String), SendError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SendError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = mail.from.parse().map_err(|e| bad("mail.from", &e))?;
    let reply_to: Mailbox = mail.reply_to.parse().map_err(|e| bad("mail.reply_to", &e))?;
    let to_address = delivery
        .recipient
        .email
        .as_str()
        .parse()
        .map_err(|e| bad("recipient", &e))?;
    let name = (!delivery.recipient.name.is_empty()).then(|| delivery.recipient.name.clone());
    let to = Mailbox::new(name, to_address);
    let id = message_id(
        event_id,
        &delivery.notification,
        &delivery.recipient.email.key(),
        from.email.domain(),
    );
    let mut builder = Message::builder()
        .from(from)
        .reply_to(reply_to)
        .to(to)
        .subject(content.subject.clone())
        .message_id(Some(id.clone()))
        .date_now();
    if optional {
        let name = HeaderName::new_from_ascii("List-Unsubscribe".into()).map_err(|e| bad("header", &e))?;
        builder = builder.raw_header(HeaderValue::new(name, format!("<{}>", mail.unsubscribe_url)));
    }
    // What it is and what caused it, for mail filters and support: both are
    // identifiers (checked at decode and load), never free text.
    for (header, value) in [
        ("X-Router-Notification", delivery.notification.as_str()),
        ("X-Router-Event", event_id),
    ] {
        let name = HeaderName::new_from_ascii(header.into()).map_err(|e| bad("header", &e))?;
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        builder = builder.raw_header(HeaderValue::new(name, value));
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(
            content.text.clone(),
            content.html.clone(),
        ))
        .map_err(|e| bad("building the message", &e))?;
    Ok((message, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let a = message_id("evt-1", "n", "a@x.example", "router.example");
        assert_eq!(a, message_id("evt-1", "n", "a@x.example", "router.example"));
        assert_ne!(a, message_id("evt-1", "n", "b@x.example", "router.example"));
        assert!(a.starts_with('<') && a.ends_with("@router.example>"));
    }
}
