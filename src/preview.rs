//! Previews: one notification of one event for one recipient, produced by
//! the code the worker sends with (routing, the render session, the
//! letterhead and the MIME build), so the message shown is the message sent,
//! but for its `Date`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::directory::DirectoryView;
use crate::dispatch::email::Letterhead;
use crate::dispatch::{action_center, compose_email};
use crate::event::{EmailAddress, Event};
use crate::render::Rendered;
use crate::route::rules::Channel;
use crate::route::{Decision, Delivery, MemoryState, route};
use crate::serving::ServingSet;

/// What the worker would send.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    pub notification: String,
    pub recipient: String,
    pub locale: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// From, To, Reply-To, Message-ID, List-Unsubscribe, List-Unsubscribe-Post, … as sent.
    pub headers: BTreeMap<String, String>,
    /// The entry it files in the Action Center, for notifications that make one.
    pub action_center: Option<Value>,
    /// The whole MIME message.
    pub eml: String,
    /// What routing decided for this recipient (`send`, `hold`, `suppress`), or
    /// `none` when the rules do not send it to them (shown as if they did).
    pub decision: String,
    /// Every recipient the rules send this notification to, for choosing one.
    pub recipients: Vec<String>,
}

/// What to preview.
pub struct Ask<'a> {
    pub notification: &'a str,
    pub event: &'a Event,
    /// An address from the plan, or any address (rendered as if it were planned).
    pub recipient: Option<&'a str>,
    /// Render in this locale instead of the recipient's.
    pub locale: Option<&'a str>,
}

impl<'a> Ask<'a> {
    /// A request as people fill it in: an empty recipient or locale means none.
    pub fn new(notification: &'a str, event: &'a Event, recipient: Option<&'a str>, locale: Option<&'a str>) -> Self {
        Self {
            notification,
            event,
            recipient: recipient.filter(|r| !r.trim().is_empty()),
            locale: locale.filter(|l| !l.trim().is_empty()),
        }
    }
}

/// Previews `ask` with `set`, the way a worker configured with `letterhead` sends it.
pub fn preview(
    set: &ServingSet,
    letterhead: &Letterhead,
    directory: &dyn DirectoryView,
    ask: &Ask<'_>,
) -> Result<Preview, String> {
    let rules = &set.rules;
    let Chosen {
        delivery,
        decision,
        recipients,
        action_center,
    } = choose(set, directory, ask)?;
    let mut session = set.templates.session(ask.event);
    let email = match session.render(&delivery).map_err(|e| e.to_string())? {
        Rendered::Email(email) => email,
        Rendered::ActionCenter(_) => return Err("rendered for the wrong channel".into()),
    };
    let (message, _id) = compose_email(letterhead, rules, ask.event, &delivery, &email).map_err(|e| e.to_string())?;
    let eml = String::from_utf8_lossy(&message.formatted()).into_owned();
    let headers = header_fields(&eml);
    let action_center = match action_center {
        Some(mut d) => {
            d.recipient.locale = delivery.recipient.locale.clone();
            match session.render(&d).map_err(|e| e.to_string())? {
                Rendered::ActionCenter(content) => {
                    let spec = rules.action_center(&d.notification);
                    Some(serde_json::to_value(action_center::entry(ask.event, &d, content, spec)).unwrap_or_default())
                }
                Rendered::Email(_) => None,
            }
        }
        None => None,
    };
    Ok(Preview {
        notification: ask.notification.to_owned(),
        recipient: delivery.recipient.email.key(),
        locale: email.locale.clone(),
        subject: email.subject.clone(),
        html: email.html.clone(),
        text: email.text.clone(),
        headers,
        action_center,
        eml,
        decision,
        recipients,
    })
}

/// The delivery a preview shows, and what routing said of it.
struct Chosen {
    delivery: Delivery,
    decision: String,
    recipients: Vec<String>,
    action_center: Option<Delivery>,
}

fn choose(set: &ServingSet, directory: &dyn DirectoryView, ask: &Ask<'_>) -> Result<Chosen, String> {
    if !set.rules.notifications.contains_key(ask.notification) {
        return Err(format!("unknown notification `{}`", ask.notification));
    }
    let plan = route(ask.event, &set.rules, directory, &MemoryState::new());
    let planned: Vec<&Delivery> = plan
        .deliveries
        .iter()
        .filter(|d| d.notification == ask.notification)
        .collect();
    // Once each, in plan order (a person planned on two channels is listed once).
    let mut recipients: Vec<String> = Vec::new();
    for d in &planned {
        let key = d.recipient.email.key();
        if !recipients.contains(&key) {
            recipients.push(key);
        }
    }
    let wanted = ask.recipient.map(|r| r.trim().to_lowercase());
    let pick = |channel: Channel| {
        planned
            .iter()
            .find(|d| d.channel == channel && wanted.as_ref().is_none_or(|w| &d.recipient.email.key() == w))
            .map(|d| (*d).clone())
    };
    let email_delivery = pick(Channel::Email);
    let decision = email_delivery.as_ref().map_or("none", |d| match d.decision {
        Decision::Send => "send",
        Decision::Hold => "hold",
        Decision::Suppress => "suppress",
    });
    let mut delivery = match email_delivery {
        Some(d) => d,
        None => stand_in(set, ask, &planned, wanted.as_deref(), directory)?,
    };
    if let Some(locale) = ask.locale {
        delivery.recipient.locale = Some(locale.to_owned());
    }
    Ok(Chosen {
        delivery,
        decision: decision.to_owned(),
        recipients,
        action_center: pick(Channel::ActionCenter),
    })
}

/// The previewed email, sent to `to` instead of its recipient, marked as a
/// test: `[Test]` before the subject and an `X-Router-Test` header.
pub fn test_message(
    set: &ServingSet,
    letterhead: &Letterhead,
    directory: &dyn DirectoryView,
    ask: &Ask<'_>,
    to: &str,
) -> Result<lettre::Message, String> {
    let to = EmailAddress::parse(to).map_err(|e| format!("`{to}` is not an email address: {e}"))?;
    let mut delivery = choose(set, directory, ask)?.delivery;
    let mut session = set.templates.session(ask.event);
    let mut email = match session.render(&delivery).map_err(|e| e.to_string())? {
        Rendered::Email(email) => email,
        Rendered::ActionCenter(_) => return Err("rendered for the wrong channel".into()),
    };
    email.subject = format!("[Test] {}", email.subject);
    delivery.recipient.email = to;
    let (mut message, _) =
        compose_email(letterhead, &set.rules, ask.event, &delivery, &email).map_err(|e| e.to_string())?;
    message
        .headers_mut()
        .insert_raw(lettre::message::header::HeaderValue::new(
            lettre::message::header::HeaderName::new_from_ascii_str("X-Router-Test"),
            "a test send from the console, not a notification".to_owned(),
        ));
    Ok(message)
}

/// A delivery of the notification to someone the rules do not send it to:
/// another planned delivery's fields with this recipient, or a stand-in.
fn stand_in(
    set: &ServingSet,
    ask: &Ask<'_>,
    planned: &[&Delivery],
    wanted: Option<&str>,
    directory: &dyn DirectoryView,
) -> Result<Delivery, String> {
    let address = wanted.unwrap_or("preview@partner.example");
    let email = EmailAddress::parse(address).map_err(|e| format!("recipient `{address}`: {e}"))?;
    let name = directory
        .user_by_email(&email)
        .map_or_else(|| "Preview Recipient".to_owned(), |u| u.name.clone());
    // Found as the worker finds a person named in an event: the directory adds locale and time zone.
    let recipient = crate::route::selector::person(&serde_json::json!({"email": address, "name": name}), directory)
        .ok_or_else(|| format!("recipient `{address}` is not an email address"))?;
    if let Some(d) = planned.iter().find(|d| d.channel == Channel::Email) {
        return Ok(Delivery {
            recipient,
            decision: Decision::Send,
            ..(*d).clone()
        });
    }
    let template = set
        .rules
        .rules
        .iter()
        .find_map(|r| match &r.action {
            crate::route::rules::Action::Notify(n) if n.notification == ask.notification => Some(n.template.clone()),
            _ => None,
        })
        .unwrap_or_else(|| ask.notification.to_owned());
    let receiver = ask.event.receivers().iter().find(|r| r.partner_id.is_some());
    let mut d = Delivery::stand_in(&template, Channel::Email, recipient, receiver);
    d.notification = ask.notification.to_owned();
    Ok(d)
}

/// The top-level header fields of a MIME message, unfolded.
fn header_fields(eml: &str) -> BTreeMap<String, String> {
    let head = eml.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_owned(), value.trim().to_owned()));
        }
    }
    fields.into_iter().collect()
}
