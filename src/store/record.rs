//! What both backends write for a directory change: the key it replaces and
//! the event itself, stored as a structured CloudEvent so any worker can
//! replay it into its in-memory directory.

use serde_json::json;

use crate::event::{Event, EventData};

/// The directory key an event replaces (partner, user, profile contact).
/// A removal is stored under the same key, as a tombstone.
pub fn directory_key(event: &Event) -> Option<String> {
    Some(match &event.data {
        EventData::PartnerUpserted(p) => format!("partner:{}", p.partner_id),
        EventData::UserUpserted(u) => format!("user:{}:{}", u.partner_id, u.user.user_id),
        EventData::UserRemoved(u) => format!("user:{}:{}", u.partner_id, u.user_id),
        EventData::ProfileContactSet(c) => format!("contact:{}:{}", c.partner_id, c.location_id),
        _ => return None,
    })
}

/// The event as a structured CloudEvent, to replay into the directory.
pub fn cloudevent_json(event: &Event) -> String {
    json!({
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.event_type,
        "time": event.time,
        "subject": event.subject,
        "data": event.data,
    })
    .to_string()
}

/// Decodes stored directory rows, in order.
pub fn decode_rows(rows: impl IntoIterator<Item = String>) -> Result<Vec<Event>, super::StoreError> {
    rows.into_iter()
        .map(|raw| {
            crate::decode::decode_structured(raw.as_bytes())
                .map_err(|e| super::StoreError(format!("stored directory: {e}")))
        })
        .collect()
}
