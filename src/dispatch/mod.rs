//! Dispatch: planned deliveries out to people. [`email`] builds MIME messages
//! and sends them over SMTP (or into `.eml` files); [`action_center`] stores
//! in-app entries and publishes them. What the messages say comes through the
//! narrow [`Renderer`] seam, so the rendering step can be swapped whole.

pub mod action_center;
pub mod email;
mod plain;

use std::sync::Arc;

use crate::event::Event;
use crate::route::{Delivery, RuleSet};

pub use plain::PlainRenderer;

/// The rendered parts of one email.
#[derive(Clone, Debug, PartialEq)]
pub struct EmailContent {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The rendered parts of one Action Center entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionCenterContent {
    pub title: String,
    pub body: String,
    /// An absolute deep link into the portal.
    pub link: String,
}

/// Turns (event, delivery) into what the recipient reads. An error is
/// permanent for that delivery: the same input renders the same way.
pub trait Renderer: Send + Sync {
    fn email(&self, event: &Event, delivery: &Delivery) -> Result<EmailContent, String>;
    fn action_center(&self, event: &Event, delivery: &Delivery) -> Result<ActionCenterContent, String>;
    /// One digest email: `digest` addresses it (its notification, template and
    /// recipient); `items` are the held deliveries it lists, with their events.
    fn digest(&self, digest: &Delivery, items: &[(Event, Delivery)]) -> Result<EmailContent, String>;
}

/// Builds the renderer for a rule set (at start and on every reload); an
/// error rejects the set, and the previous one keeps serving.
pub type RendererFactory = Arc<dyn Fn(&Arc<RuleSet>) -> Result<Arc<dyn Renderer>, String> + Send + Sync>;

/// The built-in factory: a [`PlainRenderer`] linking into `portal_url`.
pub fn plain_factory(portal_url: String) -> RendererFactory {
    Arc::new(move |rules: &Arc<RuleSet>| {
        Ok(Arc::new(PlainRenderer::new(rules.clone(), portal_url.clone())) as Arc<dyn Renderer>)
    })
}
