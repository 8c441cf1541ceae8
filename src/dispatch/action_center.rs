//! Action Center out: an entry per recipient user, stored (the HTTP API reads
//! it) and published as JSON to the portal's exchange with a publisher confirm.

use chrono::Utc;
use lapin::BasicProperties;
use sha2::{Digest, Sha256};

use crate::broker::Publisher;
use crate::error::Failure;
use crate::event::Event;
use crate::render::RenderedEntry;
use crate::route::Delivery;
use crate::route::rules::ActionCenterSpec;
use crate::store::{ActionCenterEntry, Store};

/// Stores the entry (the HTTP API reads it), then publishes it to `exchange`
/// under `CATEGORY.NOTIFICATION` and waits for the broker's confirm. Both are
/// idempotent by the entry's id.
pub async fn publish(
    store: &dyn Store,
    publisher: &Publisher,
    exchange: &str,
    entry: &ActionCenterEntry,
) -> Result<(), Failure> {
    store.put_entry(entry).await?;
    let payload = serde_json::to_vec(entry).unwrap_or_default();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(entry.id.as_str().into());
    let key = format!("{}.{}", entry.category, entry.notification);
    publisher
        .publish(exchange, &key, &payload, props)
        .await
        .map_err(|e| Failure::Broker(e.to_string()))
}

/// The entry's id: stable for (event, notification, recipient), so storing or
/// publishing it twice is recognisable as the same entry.
pub fn entry_id(event_id: &str, notification: &str, recipient_key: &str) -> String {
    let mut h = Sha256::new();
    for part in ["action-center", event_id, notification, recipient_key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Whose entry it is: the portal user id, else the contact's lower-cased email.
pub fn owner(delivery: &Delivery) -> String {
    delivery
        .recipient
        .user_id
        .as_ref()
        .map_or_else(|| delivery.recipient.email.key(), |u| u.as_str().to_string())
}

pub fn entry(
    event: &Event,
    delivery: &Delivery,
    content: RenderedEntry,
    spec: Option<&ActionCenterSpec>,
) -> ActionCenterEntry {
    let created_at = Utc::now();
    let expires_at = spec
        .and_then(|s| s.expires_after)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| created_at + d);
    ActionCenterEntry {
        id: entry_id(
            event.id.as_str(),
            &delivery.notification,
            &delivery.recipient.email.key(),
        ),
        user: owner(delivery),
        partner_id: delivery.recipient.partner_id.as_ref().map(|p| p.to_string()),
        event_id: event.id.to_string(),
        notification: delivery.notification.clone(),
        category: spec.map_or_else(|| "general".to_string(), |s| s.category.clone()),
        priority: spec.map_or_else(|| "normal".to_string(), |s| s.priority.clone()),
        title: content.title,
        body: content.body,
        link: content.link,
        created_at,
        expires_at,
        read: false,
        seen: false,
        archived: false,
    }
}
