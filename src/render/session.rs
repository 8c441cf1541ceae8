//! Render step, per event: one [`Session`] renders every delivery of an event.
//!
//! Most of a message depends on the event, the template's locale, the time
//! zone its dates are shown in and (for fan-out rules) the receiver, not on
//! the person. So each such combination is rendered once, with markers where
//! the recipient's name and address go, and every recipient after that costs a
//! string fill. The check (`check.rs`) guarantees those two fields are only
//! ever printed, so the fill gives exactly what a full render would.

use std::collections::HashMap;

use handlebars::Context;
use serde_json::{Map, Value, json};

use super::source::{ACTION_CENTER_PARTS, EMAIL_PARTS, Kind, LINK_PART};
use super::{Entry, RenderError, Rendered, RenderedEmail, RenderedEntry, Templates, one_line};
use crate::event::Event;
use crate::route::rules::Channel;
use crate::route::{Delivery, Recipient};

/// Renders the deliveries of one event, sharing the per-event work.
pub struct Session<'t> {
    templates: &'t Templates,
    event: &'t Event,
    /// The event as templates see it, built once; per-delivery fields are set in place.
    context: Option<Context>,
    cache: HashMap<Key, Vec<Part>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    template: String,
    locale: String,
    time_zone: Option<String>,
    receiver: Option<String>,
    channel: Channel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Name,
    Email,
    PreferencesUrl,
}

impl Slot {
    const ALL: [Slot; 3] = [Slot::Name, Slot::Email, Slot::PreferencesUrl];

    fn field(self) -> &'static str {
        match self {
            Slot::Name => "name",
            Slot::Email => "email",
            Slot::PreferencesUrl => "preferences_url",
        }
    }
}

/// One recipient's values of the slots.
struct Filling<'a> {
    recipient: &'a Recipient,
    preferences_url: String,
}

#[derive(Debug)]
enum Segment {
    Text(String),
    Slot(Slot),
}

/// One rendered part (subject, HTML body...) with the recipient's fields still open.
#[derive(Debug)]
struct Part {
    kind: Kind,
    len: usize,
    segments: Vec<Segment>,
}

impl<'t> Session<'t> {
    pub(super) fn new(templates: &'t Templates, event: &'t Event) -> Self {
        Self {
            templates,
            event,
            context: None,
            cache: HashMap::new(),
        }
    }

    /// Renders one delivery of this session's event, on the delivery's channel.
    pub fn render(&mut self, delivery: &Delivery) -> Result<Rendered, RenderError> {
        let templates = self.templates;
        let name = &delivery.template;
        let entry = templates
            .entries
            .get(name)
            .ok_or_else(|| RenderError::UnknownTemplate(name.clone()))?;
        if delivery.channel == Channel::ActionCenter && !entry.action_center {
            return Err(RenderError::NoActionCenter { template: name.clone() });
        }
        let locale = templates
            .pick_locale(name, delivery.recipient.locale.as_deref())
            .ok_or_else(|| RenderError::UnknownTemplate(name.clone()))?
            .to_owned();
        let key = Key {
            template: name.clone(),
            locale,
            time_zone: delivery.recipient.time_zone.clone(),
            receiver: delivery.receiver.as_ref().map(Value::to_string),
            channel: delivery.channel,
        };
        if !self.cache.contains_key(&key) {
            let parts = self.prepare(&key, entry, delivery)?;
            self.cache.insert(key.clone(), parts);
        }
        let parts = &self.cache[&key];
        let r = &Filling {
            recipient: &delivery.recipient,
            preferences_url: templates
                .preferences
                .url(delivery.recipient.email.as_str(), &delivery.notification),
        };
        let notification = delivery.notification.clone();
        Ok(match key.channel {
            Channel::Email => Rendered::Email(RenderedEmail {
                notification,
                locale: key.locale,
                subject: one_line(&fill(&parts[0], r)),
                html: fill(&parts[1], r),
                text: fill(&parts[2], r),
            }),
            Channel::ActionCenter => Rendered::ActionCenter(RenderedEntry {
                notification,
                locale: key.locale,
                title: one_line(&fill(&parts[0], r)),
                body: fill(&parts[1], r).trim().to_owned(),
                link: one_line(&fill(&parts[2], r)),
            }),
        })
    }

    /// What the templates see for `delivery` (with the recipient's real name and address).
    pub fn context(&mut self, delivery: &Delivery) -> Result<Value, RenderError> {
        let templates = self.templates;
        let entry = templates
            .entries
            .get(&delivery.template)
            .ok_or_else(|| RenderError::UnknownTemplate(delivery.template.clone()))?;
        let locale = templates
            .pick_locale(&delivery.template, delivery.recipient.locale.as_deref())
            .unwrap_or(super::DEFAULT_LOCALE)
            .to_owned();
        let r = &delivery.recipient;
        let url = templates.preferences.url(r.email.as_str(), &delivery.notification);
        let context = self.event_context(entry, delivery, &locale, [r.name.clone(), r.email.to_string(), url]);
        Ok(context.data().clone())
    }

    /// The shared context, with this delivery's fields set in place (no copy of the event).
    /// `slots`: the recipient's name, email and preferences URL (or their markers).
    fn event_context(&mut self, entry: &Entry, d: &Delivery, locale: &str, slots: [String; 3]) -> &Context {
        let event = self.event;
        let context = self
            .context
            .get_or_insert_with(|| Context::from(serde_json::to_value(event).unwrap_or(Value::Null)));
        if let Some(obj) = context.data_mut().as_object_mut() {
            obj.insert("recipient".into(), recipient(slots, d.recipient.time_zone.as_deref()));
            obj.insert("receiver".into(), d.receiver.clone().unwrap_or(Value::Null));
            obj.insert("notification".into(), Value::String(entry.title.clone()));
            obj.insert("locale".into(), Value::String(locale.to_owned()));
        }
        context
    }

    fn prepare(&mut self, key: &Key, entry: &Entry, delivery: &Delivery) -> Result<Vec<Part>, RenderError> {
        let templates = self.templates;
        let nonce = &templates.nonce;
        let markers = Slot::ALL.map(|slot| marker(nonce, slot));
        let context = self.event_context(entry, delivery, &key.locale, markers);
        let link = [(LINK_PART, Kind::Text)];
        let parts: Vec<(&str, Kind)> = match key.channel {
            Channel::Email => EMAIL_PARTS.to_vec(),
            Channel::ActionCenter => ACTION_CENTER_PARTS.iter().chain(&link).copied().collect(),
        };
        parts
            .into_iter()
            .map(|(part, kind)| {
                let out = render_part(templates, &key.locale, &key.template, part, kind, context)?;
                Ok(split(&out, nonce, kind))
            })
            .collect()
    }
}

fn recipient([name, email, preferences_url]: [String; 3], time_zone: Option<&str>) -> Value {
    json!({"name": name, "email": email, "preferences_url": preferences_url, "time_zone": time_zone})
}

fn render_part(
    templates: &Templates,
    locale: &str,
    template: &str,
    part: &str,
    kind: Kind,
    context: &Context,
) -> Result<String, RenderError> {
    let regs = &templates.registries[locale];
    let reg = match kind {
        Kind::Html => &regs.html,
        Kind::Text => &regs.text,
    };
    let name = format!("{template}/{part}");
    reg.render_with_context(&name, context)
        .map_err(|e| RenderError::Engine {
            template: format!("{template}/{locale}/{part}"),
            source: Box::new(e),
        })
}

fn marker(nonce: &str, slot: Slot) -> String {
    format!("\u{E000}{nonce}:{}\u{E001}", slot.field())
}

/// Cuts a rendered part at the recipient markers.
fn split(out: &str, nonce: &str, kind: Kind) -> Part {
    let open = format!("\u{E000}{nonce}:");
    let mut segments = Vec::new();
    let mut rest = out;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let slot = Slot::ALL.into_iter().find_map(|slot| {
            let field = slot.field();
            (after.starts_with(field) && after[field.len()..].starts_with('\u{E001}'))
                .then(|| (slot, field.len() + '\u{E001}'.len_utf8()))
        });
        let Some((slot, len)) = slot else {
            segments.push(Segment::Text(rest[..at + open.len()].to_owned()));
            rest = after;
            continue;
        };
        if at > 0 {
            segments.push(Segment::Text(rest[..at].to_owned()));
        }
        segments.push(Segment::Slot(slot));
        rest = &after[len..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_owned()));
    }
    Part {
        kind,
        len: out.len(),
        segments,
    }
}

/// The part with this recipient's fields, escaped as the part's kind needs.
fn fill(part: &Part, r: &Filling) -> String {
    let mut s = String::with_capacity(part.len + 64);
    for segment in &part.segments {
        match segment {
            Segment::Text(t) => s.push_str(t),
            Segment::Slot(slot) => {
                let value = match slot {
                    Slot::Name => r.recipient.name.as_str(),
                    Slot::Email => r.recipient.email.as_str(),
                    Slot::PreferencesUrl => r.preferences_url.as_str(),
                };
                match part.kind {
                    Kind::Html => s.push_str(&handlebars::html_escape(value)),
                    Kind::Text => s.push_str(value),
                }
            }
        }
    }
    s
}

/// Renders a digest for one recipient (no sharing: each digest is its own).
pub(super) fn render_digest(
    templates: &Templates,
    notification: &str,
    template: &str,
    r: &Recipient,
    leads: &[Event],
) -> Result<RenderedEmail, RenderError> {
    let entry = templates
        .entries
        .get(template)
        .ok_or_else(|| RenderError::UnknownTemplate(template.to_owned()))?;
    let locale = templates
        .pick_locale(template, r.locale.as_deref())
        .ok_or_else(|| RenderError::UnknownTemplate(template.to_owned()))?
        .to_owned();
    let items: Vec<Value> = leads
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    let partner = items
        .first()
        .and_then(|e| e.pointer("/data/partner"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut ctx = Map::new();
    let url = templates.preferences.url(r.email.as_str(), notification);
    ctx.insert(
        "recipient".into(),
        recipient([r.name.clone(), r.email.to_string(), url], r.time_zone.as_deref()),
    );
    ctx.insert("notification".into(), Value::String(entry.title.clone()));
    ctx.insert("locale".into(), Value::String(locale.clone()));
    ctx.insert("count".into(), Value::from(items.len()));
    ctx.insert("partner".into(), partner);
    ctx.insert("leads".into(), Value::Array(items));
    let context = Context::from(Value::Object(ctx));
    let mut parts = EMAIL_PARTS
        .iter()
        .map(|(part, kind)| render_part(templates, &locale, template, part, *kind, &context));
    let mut next = || parts.next().unwrap_or_else(|| Ok(String::new()));
    Ok(RenderedEmail {
        notification: template.to_owned(),
        subject: one_line(&next()?),
        html: next()?,
        text: next()?,
        locale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_split_and_fill_with_escaping() {
        let nonce = "n1";
        let out = format!(
            "<p>Hi {}, {}</p><a href=\"{}\">",
            marker(nonce, Slot::Name),
            marker(nonce, Slot::Email),
            marker(nonce, Slot::PreferencesUrl)
        );
        let part = split(&out, nonce, Kind::Html);
        let r = Recipient {
            email: crate::event::EmailAddress::parse("a@b.example").unwrap(),
            name: "Tom & <Jerry>".into(),
            user_id: None,
            partner_id: None,
            locale: None,
            time_zone: None,
        };
        let r = Filling {
            recipient: &r,
            preferences_url: "https://x.example/p?a=1&b=2".into(),
        };
        assert_eq!(
            fill(&part, &r),
            "<p>Hi Tom &amp; &lt;Jerry&gt;, a@b.example</p><a href=\"https://x.example/p?a&#x3D;1&amp;b&#x3D;2\">"
        );
        let text = split(&out, nonce, Kind::Text);
        assert_eq!(
            fill(&text, &r),
            "<p>Hi Tom & <Jerry>, a@b.example</p><a href=\"https://x.example/p?a=1&b=2\">"
        );
        // A marker with another nonce (say, typed into an event) is left alone.
        let forged = split("x\u{E000}n2:name\u{E001}", nonce, Kind::Text);
        assert_eq!(fill(&forged, &r), "x\u{E000}n2:name\u{E001}");
    }
}
