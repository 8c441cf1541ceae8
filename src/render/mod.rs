//! Render step (decode -> route -> **render** -> dispatch): a planned
//! [`Delivery`](crate::route::Delivery) becomes words. Email gets a subject, an HTML body and a text
//! body; an Action Center entry gets a title, a body and a deep link.
//!
//! Template authors own `templates/` (see its README). Everything there is
//! loaded and checked at start: syntax, every path against the event model
//! (also inside `#if`/`#each`, where handlebars' strict mode does not look),
//! and a strict render of every template against the example events in every
//! locale. A set with any error is rejected whole, so a broken template never
//! reaches an inbox, and a reload that fails leaves the previous good set
//! serving (`App::reload`).
//!
//! How the worker uses it:
//!
//! ```text
//! let templates = Templates::load(Path::new("templates"), &rules, options)?;   // at start
//! let mut session = templates.session(&event);                                  // once per event
//! for delivery in plan.deliveries.iter().filter(|d| d.decision == Decision::Send) {
//!     match session.render(delivery)? {
//!         Rendered::Email(email) => {
//!             let id = message_id(&event.id, &delivery.notification, &delivery.recipient.email, "router.example");
//!             let unsubscribe = templates.is_optional(&delivery.notification).then(|| list_unsubscribe(delivery));
//!             let message = build_email(&email, &sender, &delivery.recipient, &id, unsubscribe.as_ref(), event.id.as_str())?;
//!         }
//!         Rendered::ActionCenter(entry) => { /* store and publish entry.title, entry.body, entry.link */ }
//!     }
//! }
//! let digest = templates.render_digest("leads-digest", "leads-digest", &recipient, &held_lead_events)?;  // at flush
//! ```
//!
//! A [`Session`] renders what does not depend on the person once per event
//! (per template, locale, time zone and receiver) and only fills in each
//! recipient's name and address after that.

pub mod check;
mod encode;
pub mod helpers;
mod inline;
mod load;
pub mod message;
pub mod schema;
mod session;
pub mod source;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use handlebars::Handlebars;
use serde::Serialize;

use crate::event::Event;
use crate::route::{Recipient, RuleSet};
pub use message::{ListUnsubscribe, MessageError, Sender, build_email, message_id};
pub use session::Session;
pub use source::TemplateError;

/// What templates need from configuration.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Where deep links point, e.g. `https://partner.example` (`{{link "referrals" id}}`).
    pub portal_base_url: String,
    /// Events every template is rendered against at load (strict mode, every
    /// locale); usually the rule fixtures' examples. Empty: static checks only.
    pub examples: Vec<Event>,
    /// Where `{{recipient.preferences_url}}` points: each recipient's signed
    /// link for the notification; without, the portal's notification settings.
    pub preference_links: Option<crate::preferences::Links>,
}

/// Where a recipient manages their choice for a notification.
#[derive(Clone, Debug, Default)]
pub struct PreferenceUrls {
    portal_base_url: String,
    links: Option<crate::preferences::Links>,
}

impl PreferenceUrls {
    pub fn url(&self, email: &str, notification: &str) -> String {
        match &self.links {
            Some(links) => links.url(email, notification),
            None => format!("{}/settings/notifications", self.portal_base_url),
        }
    }
}

/// The locale used when neither the recipient's nor a close one exists.
pub const DEFAULT_LOCALE: &str = "en-US";

/// Everything wrong with a template set; it is rejected whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct TemplateErrors(pub Vec<TemplateError>);

/// A render that failed at send time. Templates are checked at load, so this
/// means an event the examples did not foresee (say, a value of the wrong
/// type); retrying will not help, the delivery is failed and logged.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no template `{0}`")]
    UnknownTemplate(String),
    #[error("template `{template}` has no Action Center text")]
    NoActionCenter { template: String },
    #[error("rendering `{template}`: {source}")]
    Engine {
        template: String,
        #[source]
        source: Box<handlebars::RenderError>,
    },
}

/// A rendered email.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedEmail {
    pub notification: String,
    pub locale: String,
    /// One line: no CR, LF or other control characters.
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// A rendered Action Center entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedEntry {
    pub notification: String,
    pub locale: String,
    pub title: String,
    pub body: String,
    /// An absolute link into the portal.
    pub link: String,
}

/// What a delivery renders to, by channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Rendered {
    Email(RenderedEmail),
    ActionCenter(RenderedEntry),
}

/// One notification's templates: which locales it has, and how it is presented.
#[derive(Clone, Debug)]
struct Entry {
    locales: Vec<String>,
    title: String,
    optional: bool,
    action_center: bool,
}

/// One locale's engines: HTML escapes, text does not.
struct Registries {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
}

/// A loaded, checked template set.
pub struct Templates {
    entries: BTreeMap<String, Entry>,
    registries: BTreeMap<String, Registries>,
    /// Marks the per-recipient fields in a per-event render; random per set so
    /// no event text can forge one.
    nonce: String,
    /// What each engine was given, for tools that render the same templates elsewhere.
    sources: Vec<EngineSource>,
    preferences: PreferenceUrls,
}

/// One template as registered with an engine (HTML with its CSS inlined).
#[derive(Clone, Debug, Serialize)]
pub struct EngineSource {
    pub locale: String,
    /// `html` (escaped) or `text`.
    pub kind: &'static str,
    /// `NOTIFICATION/PART` or a partial's name.
    pub name: String,
    pub source: String,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("templates", &self.entries.keys().collect::<Vec<_>>())
            .field("locales", &self.registries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Templates {
    /// Loads `dir` and checks it against the rules that use it: every template
    /// a rule names must exist, and every template is checked for every event
    /// type its rules handle. Any error rejects the whole set.
    pub fn load(dir: &Path, rules: &RuleSet, options: RenderOptions) -> Result<Templates, TemplateErrors> {
        load::load(dir, rules, &options).map_err(TemplateErrors)
    }

    /// Whether a template of that name exists (for `rules check`).
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Template names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The locales a template is written in.
    pub fn locales(&self, name: &str) -> &[String] {
        self.entries.get(name).map_or(&[], |e| e.locales.as_slice())
    }

    /// Whether the rules mark the notification optional (its email carries `List-Unsubscribe`).
    pub fn is_optional(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(|e| e.optional)
    }

    /// The locale a template is rendered in for someone who reads `wanted`:
    /// that locale, else one of the same language, else `en-US`.
    pub fn pick_locale(&self, name: &str, wanted: Option<&str>) -> Option<&str> {
        let locales = self.locales(name);
        let wanted = wanted.unwrap_or(DEFAULT_LOCALE);
        let language = wanted.split(['-', '_']).next().unwrap_or_default();
        locales
            .iter()
            .find(|l| l.as_str() == wanted)
            .or_else(|| locales.iter().find(|l| l.split('-').next() == Some(language)))
            .or_else(|| locales.iter().find(|l| l.as_str() == DEFAULT_LOCALE))
            .map(String::as_str)
    }

    /// Every template as the engines hold it (the render benchmark gives these to handlebars.js).
    pub fn engine_sources(&self) -> &[EngineSource] {
        &self.sources
    }

    /// Starts rendering the deliveries of one event.
    pub fn session<'t>(&'t self, event: &'t Event) -> Session<'t> {
        Session::new(self, event)
    }

    /// Renders one delivery. For several deliveries of one event, a
    /// [`Session`] is faster: it renders shared parts once.
    pub fn render(&self, event: &Event, delivery: &crate::route::Delivery) -> Result<Rendered, RenderError> {
        self.session(event).render(delivery)
    }

    /// Renders the digest `notification` with `template` for one recipient: `leads` are the held events.
    pub fn render_digest(
        &self,
        notification: &str,
        template: &str,
        recipient: &Recipient,
        leads: &[Event],
    ) -> Result<RenderedEmail, RenderError> {
        session::render_digest(self, notification, template, recipient, leads)
    }
}

/// Makes a value safe for a header: control characters (CR, LF, tab...)
/// become spaces, runs of whitespace one space, no leading or trailing space.
pub fn one_line(value: &str) -> String {
    value
        .split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every example event (`RULES/tests/events/*.json`); none when that folder
/// is not there (a deployment may ship rules without their fixtures).
pub fn example_events(rules_dir: &Path) -> Result<Vec<Event>, String> {
    let dir = rules_dir.join("tests").join("events");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| crate::decode::read_event(f).map_err(|e| e.to_string()))
        .collect()
}
