//! Render step, last stage: a rendered email becomes a MIME message
//! (multipart/alternative: text, then HTML), ready for dispatch.
//!
//! Header values never carry a line break: the subject is one line already,
//! and display names are flattened here, so no event text can start a header.

use lettre::Message;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use super::encode::text_body;
use super::{RenderedEmail, one_line};
use crate::event::{EmailAddress, EventId};
use crate::route::Recipient;

/// Who the router's email comes from.
#[derive(Clone, Debug)]
pub struct Sender {
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
}

impl Sender {
    /// `mail.from` and `mail.reply_to` as mailboxes.
    pub fn from_settings(mail: &crate::config::Mail) -> Result<Self, String> {
        let from = mail.from.parse().map_err(|e| format!("mail.from: {e}"))?;
        let reply_to = mail.reply_to.parse().map_err(|e| format!("mail.reply_to: {e}"))?;
        Ok(Self {
            from,
            reply_to: Some(reply_to),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("`{0}` cannot be used as a mail address: {1}")]
    Address(String, String),
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// A stable `Message-ID` for (event, notification, recipient): the same
/// delivery always gets the same id, so redelivered events can be recognised
/// downstream too. `domain` is the sending domain.
pub fn message_id(event: &EventId, notification: &str, recipient: &EmailAddress, domain: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut second: u64 = 0x8422_2325_cbf2_9ce4;
    let key = recipient.key();
    for byte in [event.as_str(), notification, &key]
        .iter()
        .flat_map(|s| s.bytes().chain([0]))
    {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        second = (second ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3 ^ 0x5bd1_e995);
    }
    format!("<{hash:016x}{second:016x}.{notification}@{domain}>")
}

/// Where an optional email is unsubscribed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUnsubscribe {
    pub url: String,
    /// A `POST` of `List-Unsubscribe=One-Click` to the URL stops it (RFC 8058):
    /// adds `List-Unsubscribe-Post`.
    pub one_click: bool,
}

/// The message for one rendered email. `list_unsubscribe` is given for
/// notifications the rules mark optional. `cause` is the event (or digest) id,
/// carried with the notification id in `X-Router-*` headers for mail filters
/// and support.
pub fn build_email(
    email: &RenderedEmail,
    sender: &Sender,
    to: &Recipient,
    message_id: &str,
    list_unsubscribe: Option<&ListUnsubscribe>,
    cause: &str,
) -> Result<Message, MessageError> {
    let address = to
        .email
        .as_str()
        .parse()
        .map_err(|e: lettre::address::AddressError| MessageError::Address(to.email.to_string(), e.to_string()))?;
    let name = one_line(&to.name);
    let to = Mailbox::new((!name.is_empty()).then_some(name), address);
    let mut builder = Message::builder()
        .from(sender.from.clone())
        .to(to)
        .subject(one_line(&email.subject))
        .message_id(Some(one_line(message_id)))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Router-Notification"),
            one_line(&email.notification),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Router-Event"),
            one_line(cause),
        ))
        .date_now();
    if let Some(reply_to) = &sender.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    if let Some(unsubscribe) = list_unsubscribe {
        if unsubscribe.one_click {
            builder = builder.header(ListUnsubscribePost);
        }
        builder = builder.header(ListUnsubscribeHeader(one_line(&unsubscribe.url)));
    }
    // The boundary follows from the Message-ID, so the same message is the
    // same bytes wherever it is built (the worker's send, a preview), but for `Date`.
    let body = MultiPart::alternative()
        .boundary(boundary(message_id))
        .singlepart(SinglePart::plain(text_body(&email.text)))
        .singlepart(SinglePart::html(text_body(&email.html)));
    Ok(builder.multipart(body)?)
}

/// A MIME boundary that no rendered text contains in practice: a hash of the Message-ID.
fn boundary(message_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(message_id.as_bytes());
    let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("rr-{hex}")
}

/// `List-Unsubscribe: <URL>`.
#[derive(Clone, Debug)]
struct ListUnsubscribeHeader(String);

impl Header for ListUnsubscribeHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim().trim_start_matches('<').trim_end_matches('>').to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Clone, Debug)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_case_blind_on_the_recipient() {
        let e = EventId::new("evt-1");
        let a = message_id(
            &e,
            "lead-generated",
            &EmailAddress::parse("Ann@x.example").unwrap(),
            "r.example",
        );
        let b = message_id(
            &e,
            "lead-generated",
            &EmailAddress::parse("ann@x.example").unwrap(),
            "r.example",
        );
        let c = message_id(
            &e,
            "lead-generated",
            &EmailAddress::parse("bob@x.example").unwrap(),
            "r.example",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with('<') && a.ends_with("@r.example>"));
    }
}
