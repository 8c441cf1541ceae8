//! What the store knows of an event by its id besides its notification log:
//! whether it was recorded, and whether (and why) it was dead-lettered.
//! Compiled into each backend with its `dialect`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::dialect::{Pool, Stamp, read_stamp, stamp};
use crate::store::{EventRecord, StoreError};

pub async fn record_dead_letter(
    pool: &Pool,
    event_id: &str,
    reason: &str,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO dead_letters (event_id, reason, detail, at) VALUES ($1, $2, $3, $4)")
        .bind(event_id)
        .bind(reason)
        .bind(detail)
        .bind(stamp(now))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn event_record(pool: &Pool, event_id: &str) -> Result<EventRecord, StoreError> {
    let seen = sqlx::query("SELECT event_type, completed_at FROM events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
    let dead = sqlx::query("SELECT reason, detail, at FROM dead_letters WHERE event_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
    Ok(match (seen, dead) {
        (Some(row), _) => EventRecord::Seen {
            event_type: row.try_get("event_type")?,
            completed: row.try_get::<Option<Stamp>, _>("completed_at")?.is_some(),
        },
        (None, Some(row)) => EventRecord::DeadLettered {
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            at: read_stamp(row.try_get("at")?),
        },
        (None, None) => EventRecord::Unknown,
    })
}
