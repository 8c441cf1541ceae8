//! What both backends write and read the same way: a directory change (the
//! key it replaces and the event itself, stored as a structured CloudEvent so
//! any worker can replay it into its in-memory directory), digest ids, held
//! items and notification-log rows.

use serde_json::json;

use crate::event::{DirectoryChange, Event};

/// The directory key an event replaces (partner, user, profile contact).
/// A removal is stored under the same key, as a tombstone.
pub fn directory_key(event: &Event) -> Option<String> {
    Some(match event.directory_change()? {
        DirectoryChange::PartnerUpserted(p) => format!("partner:{}", p.partner_id),
        DirectoryChange::UserUpserted(u) => format!("user:{}:{}", u.partner_id, u.user.user_id),
        DirectoryChange::UserRemoved(u) => format!("user:{}:{}", u.partner_id, u.user_id),
        DirectoryChange::ProfileContactSet(c) => format!("contact:{}:{}", c.partner_id, c.location_id),
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

/// The statuses recorded for a referral, from its `(receiver, status)`
/// rows (an empty receiver is the referral's own status).
pub fn referral_state(referral: &str, rows: impl IntoIterator<Item = (String, String)>) -> crate::route::MemoryState {
    let mut state = crate::route::MemoryState::new();
    for (receiver, status) in rows {
        if receiver.is_empty() {
            state.set_referral_status(referral, &status);
        } else {
            state.set_receiver_status(referral, &receiver, &status);
        }
    }
    state
}

/// Decodes stored directory rows, in order.
pub fn decode_rows(rows: impl IntoIterator<Item = String>) -> Result<Vec<Event>, super::StoreError> {
    rows.into_iter()
        .map(|raw| {
            crate::decode::decode_structured(raw.as_bytes())
                .map_err(|e| super::StoreError::Unreadable(format!("stored directory: {e}")))
        })
        .collect()
}

/// The id of a digest: its recipient group and exactly the held items it lists,
/// so a digest taken over after a crash keeps its id (and its Message-ID).
pub fn digest_id(group: &super::HeldGroup, held_ids: &[i64]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        &group.key.counter,
        group.key.partner.as_str(),
        &group.key.day.to_string(),
        &group.recipient,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for id in held_ids {
        h.update(id.to_le_bytes());
    }
    let hex: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("dg-{hex}")
}

/// A held item from its stored parts: the lead as a CloudEvent and the planned delivery.
pub fn held_item(log_id: i64, event_json: &str, delivery: &str) -> Result<super::HeldItem, super::StoreError> {
    let stored: super::StoredDelivery = serde_json::from_str(delivery)
        .map_err(|e| super::StoreError::Unreadable(format!("a held delivery is unreadable: {e}")))?;
    Ok(super::HeldItem {
        log_id,
        event: crate::decode::decode_structured(event_json.as_bytes())
            .map_err(|e| super::StoreError::Unreadable(format!("a held event: {e}")))?,
        delivery: stored.into(),
    })
}

/// The text columns of a notification-log row, as both backends store them.
pub struct LogText {
    pub event_id: String,
    pub event_type: String,
    pub notification: String,
    pub channel: String,
    pub recipient: String,
    pub status: String,
    pub rules: String,
    pub message_id: Option<String>,
    pub digest_id: Option<String>,
    pub error: Option<String>,
}

/// A notification-log entry from its stored columns.
pub fn log_entry(
    t: LogText,
    attempts: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
) -> Result<super::LogEntry, super::StoreError> {
    let status = super::LogStatus::parse(&t.status)
        .ok_or_else(|| super::StoreError::Unreadable(format!("unknown log status `{}`", t.status)))?;
    Ok(super::LogEntry {
        event_id: t.event_id,
        event_type: t.event_type,
        notification: t.notification,
        channel: t.channel,
        recipient: t.recipient,
        status,
        rules: serde_json::from_str(&t.rules).unwrap_or_default(),
        message_id: t.message_id,
        digest_id: t.digest_id,
        error: t.error,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at,
        updated_at,
    })
}

/// Rows per multi-row insert or update: well under either backend's limit on bound parameters.
pub const ROWS_PER_STATEMENT: usize = 300;

/// A planned delivery as a new notification-log row.
pub struct LogRow<'a> {
    pub delivery: &'a crate::route::Delivery,
    pub channel: String,
    pub recipient: String,
    pub status: &'static str,
    pub rules: String,
    /// The delivery itself, as JSON, for whoever sends it.
    pub stored: String,
}

/// The log rows of a plan's deliveries.
pub fn log_rows(deliveries: &[crate::route::Delivery]) -> Result<Vec<LogRow<'_>>, super::StoreError> {
    use crate::route::Decision;
    deliveries
        .iter()
        .map(|delivery| {
            Ok(LogRow {
                delivery,
                channel: delivery.channel.to_string(),
                recipient: delivery.recipient.email.key(),
                status: match delivery.decision {
                    Decision::Send => "pending",
                    Decision::Hold => "held",
                    Decision::Suppress => "suppressed",
                },
                rules: serde_json::to_string(&delivery.rules).unwrap_or_default(),
                stored: serde_json::to_string(&super::StoredDelivery::from(delivery))
                    .map_err(|e| super::StoreError::Unreadable(format!("serializing a delivery: {e}")))?,
            })
        })
        .collect()
}

/// The held delivery (and its digest key) a logged row is, if it is one:
/// rows are matched back by (notification, channel, recipient), what the
/// insert returns.
pub fn held_row<'a>(
    rows: &[LogRow<'a>],
    notification: &str,
    channel: &str,
    recipient: &str,
) -> Option<(&'a crate::route::DigestKey, &'a crate::route::Delivery)> {
    rows.iter()
        .find(|r| {
            r.status == "held"
                && r.delivery.notification == notification
                && r.channel == channel
                && r.recipient == recipient
        })
        .and_then(|r| r.delivery.digest.as_ref().map(|key| (key, r.delivery)))
}

/// A digest settlement as stored: the digest's status, its items' log
/// status, and the Message-ID or error their log rows carry.
pub fn digest_settlement<'a>(
    outcome: &super::DigestOutcome<'a>,
) -> (&'static str, &'static str, Option<&'a str>, Option<&'a str>) {
    match *outcome {
        super::DigestOutcome::Sent { message_id } => ("sent", "digested", Some(message_id), None),
        super::DigestOutcome::Failed { error } => ("failed", "failed", None, Some(error)),
        super::DigestOutcome::Empty => ("empty", "suppressed", None, None),
    }
}
