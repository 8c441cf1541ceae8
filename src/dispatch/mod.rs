//! Dispatch: planned deliveries out to people, one send path per channel.
//! [`email`] sends MIME messages over SMTP (or into `.eml` files);
//! [`action_center`] stores in-app entries and publishes them. Events and
//! digests both go out through [`Dispatcher`]; what they say comes from the
//! `render` step.
//!
//! A new channel is a file here with its send function, an arm in
//! `Dispatcher::send`, and its template parts.

pub mod action_center;
pub mod email;
mod smtp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::broker::Publisher;
use crate::error::{Failure, ProcessError};
use crate::event::Event;
use crate::render::{Rendered, Session};
use crate::route::RuleSet;
use crate::route::rules::Channel;
use crate::store::{OutboxItem, Store, StoreError};
use crate::telemetry::Metrics;
use email::{Letterhead, Mailer};

/// The MIME message an email delivery of `event` goes out as, and its
/// Message-ID: what the worker hands the SMTP server, and what a preview shows.
pub fn compose_email(
    letterhead: &Letterhead,
    rules: &RuleSet,
    event: &Event,
    delivery: &crate::route::Delivery,
    email: &crate::render::RenderedEmail,
) -> Result<(lettre::Message, String), Failure> {
    let optional = rules.is_optional(&delivery.notification);
    letterhead.compose(
        email,
        &delivery.notification,
        optional,
        &delivery.recipient,
        event.id.as_str(),
    )
}

/// The parts every send uses.
pub struct Dispatcher {
    pub store: Arc<dyn Store>,
    pub mailer: Mailer,
    pub letterhead: Letterhead,
    pub publisher: Publisher,
    pub action_center_exchange: String,
    pub metrics: Metrics,
    /// How long a claim on a delivery lasts unless renewed (`store.lease`).
    pub lease: Duration,
}

/// One event being sent: its rendering session and when its claims were last renewed.
pub struct EventSend<'a> {
    pub event: &'a Event,
    pub rules: &'a RuleSet,
    pub session: Session<'a>,
    renewed: Instant,
}

impl<'a> EventSend<'a> {
    pub fn new(event: &'a Event, rules: &'a RuleSet, session: Session<'a>) -> Self {
        Self {
            event,
            rules,
            session,
            renewed: Instant::now(),
        }
    }
}

impl Dispatcher {
    /// Sends one delivery of an event and records what became of it: sent,
    /// failed for good (logged with the reason, never retried), or a
    /// transient failure, counted on the log row and returned for a retry.
    pub async fn dispatch(&self, send: &mut EventSend<'_>, item: &OutboxItem) -> Result<(), ProcessError> {
        if !self.still_ours(item, &mut send.renewed).await? {
            return Ok(());
        }
        match self.send(send, item).await {
            Ok(id) => {
                self.count(item.delivery.channel, "sent");
                let d = &item.delivery;
                info!(notification = %d.notification, channel = %d.channel, recipient = %d.recipient.email,
                      rules = ?d.rules, id = %id, "sent");
                Ok(())
            }
            Err(Failure::TakenOver) => Ok(()),
            Err(Failure::Permanent(reason)) => Ok(self.failed(item, &reason).await?),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(transient @ (Failure::Mail(_) | Failure::Broker(_) | Failure::NotYet(_))) => {
                self.store.note_attempt(item.log_id, &transient.to_string()).await?;
                Err(transient.into())
            }
        }
    }

    /// One delivery out on its channel; the id it went out with.
    async fn send(&self, send: &mut EventSend<'_>, item: &OutboxItem) -> Result<String, Failure> {
        let d = &item.delivery;
        // An email waits for its place among those going out before it is rendered, not after.
        let slot = match d.channel {
            Channel::Email => Some(self.mailer.slot().await?),
            Channel::ActionCenter => None,
        };
        let rendered = send
            .session
            .render(d)
            .map_err(|e| Failure::Permanent(format!("rendering: {e}")))?;
        match (d.channel, rendered, slot) {
            (Channel::Email, Rendered::Email(email), Some(slot)) => {
                let cause = send.event.id.as_str();
                let (message, id) = compose_email(&self.letterhead, send.rules, send.event, d, &email)?;
                // The message holds it now: what waits for an SMTP connection is held once, not twice.
                drop(email);
                let still_ours = self.still_ours(item, &mut send.renewed);
                let record = self.store.mark_sent(cause, item.log_id, Some(&id));
                self.mailer.deliver_in(slot, message, still_ours, record).await?;
                Ok(id)
            }
            (Channel::ActionCenter, Rendered::ActionCenter(content), _) => {
                let spec = send.rules.action_center(&d.notification);
                let entry = action_center::entry(send.event, d, content, spec);
                action_center::publish(&*self.store, &self.publisher, &self.action_center_exchange, &entry).await?;
                self.store
                    .mark_sent(send.event.id.as_str(), item.log_id, Some(&entry.id))
                    .await?;
                Ok(entry.id)
            }
            _ => Err(Failure::Permanent("rendered for the wrong channel".into())),
        }
    }

    /// Whether this worker may still send `item`. A long event renews its claims
    /// as it goes (once more than a third of the lease has passed since the last
    /// renewal), and gives up a delivery whose claim another worker took over.
    async fn still_ours(&self, item: &OutboxItem, renewed: &mut Instant) -> Result<bool, StoreError> {
        if renewed.elapsed() <= self.lease / 3 {
            return Ok(true);
        }
        if !self.store.claim_delivery(item.log_id).await? {
            info!(notification = %item.delivery.notification, recipient = %item.delivery.recipient.email,
                  "sent or being sent by another worker");
            return Ok(false);
        }
        *renewed = Instant::now();
        Ok(true)
    }

    async fn failed(&self, item: &OutboxItem, reason: &str) -> Result<(), StoreError> {
        let d = &item.delivery;
        warn!(notification = %d.notification, channel = %d.channel, recipient = %d.recipient.email,
              rules = ?d.rules, error = %reason, "delivery failed for good");
        self.count(d.channel, "failed");
        self.store.mark_failed(item.log_id, reason).await
    }

    /// Counts a delivery's outcome on `router_deliveries_total`.
    pub fn count(&self, channel: Channel, outcome: &str) {
        self.metrics
            .deliveries
            .with_label_values(&[&channel.to_string(), outcome])
            .inc();
    }
}
