//! What the store knows of an event by its id besides its notification log:
//! whether it was recorded, and whether (and why) it was dead-lettered.
//! Compiled into each backend with its `dialect`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::dialect::{Pool, Stamp, read_stamp, stamp};
use crate::event::Event;
use crate::store::{EventRecord, StoreError, record};

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

/// Keeps the event's body in the archive (inside the admission transaction).
/// Forgets archived events received before `before`; how many.
pub async fn prune_archive(pool: &Pool, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM archive WHERE received_at < $1")
        .bind(stamp(before))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Archived events received in `[since, until)`, oldest first.
pub async fn archived(pool: &Pool, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Event>, StoreError> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT event_json FROM archive WHERE received_at >= $1 AND received_at < $2 ORDER BY seq")
            .bind(stamp(since))
            .bind(stamp(until))
            .fetch_all(pool)
            .await?;
    record::decode_rows(rows)
}
