//! Digests and the notification log in SQLite. The single writer connection
//! makes each claim a serialised transaction: two flushes never claim the
//! same held item, and a lease lets a later flush take over a dead one.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::{parse_ts, ts};
use crate::event::PartnerId;
use crate::route::DigestKey;
use crate::store::{DigestClaim, DigestOutcome, HeldGroup, HeldItem, LogEntry, StoreError, record};

pub async fn groups(pool: &SqlitePool) -> Result<Vec<HeldGroup>, StoreError> {
    let rows = sqlx::query(
        "SELECT counter, partner, day, recipient, MIN(created_at) AS oldest, COUNT(*) AS items
         FROM held WHERE digested_at IS NULL
         GROUP BY counter, partner, day, recipient ORDER BY oldest",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let day: String = row.try_get("day")?;
            let oldest: String = row.try_get("oldest")?;
            let items: i64 = row.try_get("items")?;
            Ok(HeldGroup {
                key: DigestKey {
                    counter: row.try_get("counter")?,
                    partner: PartnerId::new(row.try_get::<String, _>("partner")?),
                    day: NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                        .map_err(|e| StoreError(format!("held day `{day}`: {e}")))?,
                },
                recipient: row.try_get("recipient")?,
                oldest: parse_ts(&oldest).unwrap_or_else(Utc::now),
                items: u32::try_from(items).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

pub async fn claim(
    pool: &SqlitePool,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<DigestClaim>, StoreError> {
    let key = &group.key;
    let day = key.day.to_string();
    let mut tx = pool.begin().await?;
    let open = sqlx::query(
        "SELECT id, claimed_by, lease_until, attempts FROM digests
         WHERE counter = ? AND partner = ? AND day = ? AND recipient = ? AND status = 'claimed'",
    )
    .bind(&key.counter)
    .bind(key.partner.as_str())
    .bind(&day)
    .bind(&group.recipient)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, attempt) = match open {
        Some(row) => {
            let id: String = row.try_get("id")?;
            let holder: String = row.try_get("claimed_by")?;
            let leased: String = row.try_get("lease_until")?;
            let attempts: i64 = row.try_get("attempts")?;
            if holder != worker && parse_ts(&leased).is_some_and(|t| t > now) {
                tx.commit().await?;
                return Ok(None);
            }
            sqlx::query("UPDATE digests SET claimed_by = ?, lease_until = ?, attempts = attempts + 1 WHERE id = ?")
                .bind(worker)
                .bind(ts(lease_until))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            (id, u32::try_from(attempts + 1).unwrap_or(u32::MAX))
        }
        None => {
            let held: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM held WHERE counter = ? AND partner = ? AND day = ? AND recipient = ?
                   AND digest_id IS NULL AND digested_at IS NULL ORDER BY id",
            )
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(&day)
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
                 VALUES (?, ?, ?, ?, ?, 'claimed', ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(&key.counter)
            .bind(key.partner.as_str())
            .bind(&day)
            .bind(&group.recipient)
            .bind(worker)
            .bind(ts(lease_until))
            .bind(i64::try_from(held.len()).unwrap_or(i64::MAX))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            for held_id in &held {
                sqlx::query("UPDATE held SET digest_id = ? WHERE id = ?")
                    .bind(&id)
                    .bind(held_id)
                    .execute(&mut *tx)
                    .await?;
            }
            (id, 1)
        }
    };
    let rows = sqlx::query(
        "SELECT held.log_id, held.event_json, notification_log.delivery FROM held
         JOIN notification_log ON notification_log.id = held.log_id
         WHERE held.digest_id = ? ORDER BY held.id",
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

fn held_item(row: &SqliteRow) -> Result<HeldItem, StoreError> {
    let event_json: String = row.try_get("event_json")?;
    let delivery: String = row.try_get("delivery")?;
    record::held_item(row.try_get("log_id")?, &event_json, &delivery)
}

/// Settles a claimed digest: sent, or failed for good. Either way its items
/// leave the held groups, and their log rows say which.
pub async fn settle(
    pool: &SqlitePool,
    digest_id: &str,
    outcome: &DigestOutcome<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = ts(now);
    let (status, log_status, message_id, error) = record::digest_settlement(outcome);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE digests SET status = ?, message_id = ?, sent_at = ? WHERE id = ? AND status = 'claimed'")
        .bind(status)
        .bind(message_id)
        .bind(&now)
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE notification_log SET status = ?, digest_id = ?, message_id = ?, error = ?, updated_at = ?
         WHERE id IN (SELECT log_id FROM held WHERE digest_id = ?)",
    )
    .bind(log_status)
    .bind(digest_id)
    .bind(message_id)
    .bind(error)
    .bind(&now)
    .bind(digest_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE held SET digested_at = ? WHERE digest_id = ?")
        .bind(&now)
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

pub async fn log_for_event(pool: &SqlitePool, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE event_id = ? ORDER BY id"
    ))
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

pub async fn log_for_recipient(pool: &SqlitePool, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM notification_log WHERE recipient = ? ORDER BY created_at DESC, id DESC LIMIT ?"
    ))
    .bind(email.to_ascii_lowercase())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_entry).collect()
}

fn log_entry(row: &SqliteRow) -> Result<LogEntry, StoreError> {
    let created: String = row.try_get("created_at")?;
    let updated: String = row.try_get("updated_at")?;
    record::log_entry(
        log_text(row)?,
        row.try_get("attempts")?,
        parse_ts(&created).unwrap_or_default(),
        parse_ts(&updated).unwrap_or_default(),
    )
}

fn log_text(row: &SqliteRow) -> Result<record::LogText, StoreError> {
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
