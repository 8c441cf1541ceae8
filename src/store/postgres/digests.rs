//! Digests and the notification log in PostgreSQL. A claim takes a
//! transaction-scoped advisory lock on its recipient group, so exactly one
//! worker claims a recipient's held leads at a time; others see the group
//! busy and move on. An open claim whose lease ran out is taken over as the
//! same digest.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::event::PartnerId;
use crate::route::DigestKey;
use crate::store::{DigestClaim, DigestOutcome, HeldGroup, HeldItem, LogEntry, StoreError, record};

pub async fn groups(pool: &PgPool) -> Result<Vec<HeldGroup>, StoreError> {
    let rows = sqlx::query(
        "SELECT counter, partner, day, recipient, MIN(created_at) AS oldest, COUNT(*) AS items
         FROM held WHERE digested_at IS NULL
         GROUP BY counter, partner, day, recipient ORDER BY oldest",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let items: i64 = row.try_get("items")?;
            Ok(HeldGroup {
                key: DigestKey {
                    counter: row.try_get("counter")?,
                    partner: PartnerId::new(row.try_get::<String, _>("partner")?),
                    day: row.try_get::<NaiveDate, _>("day")?,
                },
                recipient: row.try_get("recipient")?,
                oldest: row.try_get("oldest")?,
                items: u32::try_from(items).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

pub async fn claim(
    pool: &PgPool,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<DigestClaim>, StoreError> {
    let key = &group.key;
    let mut tx = pool.begin().await?;
    let lock = format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        key.counter, key.partner, key.day, group.recipient
    );
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(&lock)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.commit().await?;
        return Ok(None);
    }
    let open = sqlx::query(
        "SELECT id, claimed_by, lease_until, attempts FROM digests
         WHERE counter = $1 AND partner = $2 AND day = $3 AND recipient = $4 AND status = 'claimed' FOR UPDATE",
    )
    .bind(&key.counter)
    .bind(key.partner.as_str())
    .bind(key.day)
    .bind(&group.recipient)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, attempt) = match open {
        Some(row) => {
            let id: String = row.try_get("id")?;
            let holder: String = row.try_get("claimed_by")?;
            let leased: DateTime<Utc> = row.try_get("lease_until")?;
            let attempts: i32 = row.try_get("attempts")?;
            if holder != worker && leased > now {
                tx.commit().await?;
                return Ok(None);
            }
            sqlx::query("UPDATE digests SET claimed_by = $1, lease_until = $2, attempts = attempts + 1 WHERE id = $3")
                .bind(worker)
                .bind(lease_until)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            (id, u32::try_from(attempts + 1).unwrap_or(u32::MAX))
        }
        None => {
            let held: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM held WHERE counter = $1 AND partner = $2 AND day = $3 AND recipient = $4
                   AND digest_id IS NULL AND digested_at IS NULL ORDER BY id FOR UPDATE",
            )
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(key.day)
            .bind(&group.recipient)
            .fetch_all(&mut *tx)
            .await?;
            if held.is_empty() {
                tx.commit().await?;
                return Ok(None);
            }
            let id = record::digest_id(group, &held);
            sqlx::query(
                "INSERT INTO digests (id, counter, partner, day, recipient, status, claimed_by, lease_until, items, created_at)
                 VALUES ($1, $2, $3, $4, $5, 'claimed', $6, $7, $8, $9)",
            )
            .bind(&id)
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(key.day)
            .bind(&group.recipient)
            .bind(worker)
            .bind(lease_until)
            .bind(i32::try_from(held.len()).unwrap_or(i32::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE held SET digest_id = $1 WHERE id = ANY($2)")
                .bind(&id)
                .bind(&held)
                .execute(&mut *tx)
                .await?;
            (id, 1)
        }
    };
    let rows = sqlx::query(
        "SELECT held.log_id, held.event_json, notification_log.delivery FROM held
         JOIN notification_log ON notification_log.id = held.log_id
         WHERE held.digest_id = $1 ORDER BY held.id",
    )
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items = rows.iter().map(held_item).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(DigestClaim {
        id,
        key: key.clone(),
        recipient: group.recipient.clone(),
        items,
        attempt,
    }))
}

fn held_item(row: &PgRow) -> Result<HeldItem, StoreError> {
    let event_json: String = row.try_get("event_json")?;
    let delivery: String = row.try_get("delivery")?;
    record::held_item(row.try_get("log_id")?, &event_json, &delivery)
}

/// Settles a claimed digest: sent, or failed for good. Either way its items
/// leave the held groups, and their log rows say which.
pub async fn settle(
    pool: &PgPool,
    digest_id: &str,
    outcome: &DigestOutcome<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (status, log_status, message_id, error) = record::digest_settlement(outcome);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE digests SET status = $1, message_id = $2, sent_at = $3 WHERE id = $4 AND status = 'claimed'")
        .bind(status)
        .bind(message_id)
        .bind(now)
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE notification_log SET status = $1, digest_id = $2, message_id = $3, error = $4, updated_at = $5
         WHERE id IN (SELECT log_id FROM held WHERE digest_id = $2)",
    )
    .bind(log_status)
    .bind(digest_id)
    .bind(message_id)
    .bind(error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE held SET digested_at = $1 WHERE digest_id = $2")
        .bind(now)
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

macro_rules! log_columns {
    () => {
        "event_id, event_type, notification, channel, recipient, status, rules, message_id, digest_id, error, \
         attempts, created_at, updated_at"
    };
}

pub async fn log_for_event(pool: &PgPool, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE event_id = $1 ORDER BY id"
    ))
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

pub async fn log_for_recipient(pool: &PgPool, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE recipient = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(email.to_ascii_lowercase())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

fn log_entry(row: &PgRow) -> Result<LogEntry, StoreError> {
    let attempts: i32 = row.try_get("attempts")?;
    record::log_entry(
        log_text(row)?,
        i64::from(attempts),
        row.try_get("created_at")?,
        row.try_get("updated_at")?,
    )
}

fn log_text(row: &PgRow) -> Result<record::LogText, StoreError> {
    Ok(record::LogText {
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        notification: row.try_get("notification")?,
        channel: row.try_get("channel")?,
        recipient: row.try_get("recipient")?,
        status: row.try_get("status")?,
        rules: row.try_get("rules")?,
        message_id: row.try_get("message_id")?,
        digest_id: row.try_get("digest_id")?,
        error: row.try_get("error")?,
    })
}
