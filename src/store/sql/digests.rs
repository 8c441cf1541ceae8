//! Digests and the notification log, written once in the SQL both stores
//! speak and compiled into each backend with its `dialect`. A claim is one
//! transaction under the dialect's lock on the recipient group (SQLite's
//! single writer, PostgreSQL's advisory lock and `FOR UPDATE`): two flushes
//! never claim the same held item, and a lease lets a later flush take over a
//! dead one, as the same digest.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::dialect::{DbRow, FOR_UPDATE, Int, Pool, Stamp, Tx, lock_group, read_stamp, stamp};
use crate::event::PartnerId;
use crate::route::DigestKey;
use crate::store::{DigestClaim, DigestOutcome, HeldGroup, HeldItem, LogEntry, StoreError, record};

pub async fn groups(pool: &Pool) -> Result<Vec<HeldGroup>, StoreError> {
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
                oldest: read_stamp(row.try_get("oldest")?),
                items: u32::try_from(items).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// Claims one recipient's held deliveries (see [`crate::store::DigestStore::claim_digest`]).
pub async fn claim(
    pool: &Pool,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<DigestClaim>, StoreError> {
    let mut tx = pool.begin().await?;
    if !lock_group(&mut tx, group).await? {
        tx.commit().await?;
        return Ok(None);
    }
    let claimed = match take_over(&mut tx, group, worker, now, lease_until).await? {
        Some(Some(claimed)) => Some(claimed),
        // Still leased to another worker.
        Some(None) => None,
        None => open(&mut tx, group, worker, now, lease_until).await?,
    };
    let Some((id, attempt)) = claimed else {
        tx.commit().await?;
        return Ok(None);
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
        key: group.key.clone(),
        recipient: group.recipient.clone(),
        items,
        attempt,
    }))
}

/// The group's open claim: `None` when there is none; `Some(None)` when
/// another worker's lease on it is live; else it is now this worker's, with
/// its id and attempt.
async fn take_over(
    tx: &mut Tx,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Option<(String, u32)>>, StoreError> {
    let key = &group.key;
    // FOR_UPDATE is one of the dialects' two constant suffixes, never input.
    let open = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, claimed_by, lease_until, attempts FROM digests
         WHERE counter = $1 AND partner = $2 AND day = $3 AND recipient = $4 AND status = 'claimed'{FOR_UPDATE}"
    )))
    .bind(&key.counter)
    .bind(key.partner.as_str())
    .bind(key.day)
    .bind(&group.recipient)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = open else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let holder: String = row.try_get("claimed_by")?;
    let leased = read_stamp(row.try_get("lease_until")?);
    let attempts: Int = row.try_get("attempts")?;
    if holder != worker && leased > now {
        return Ok(Some(None));
    }
    sqlx::query("UPDATE digests SET claimed_by = $1, lease_until = $2, attempts = attempts + 1 WHERE id = $3")
        .bind(worker)
        .bind(stamp(lease_until))
        .bind(&id)
        .execute(&mut **tx)
        .await?;
    Ok(Some(Some((id, u32::try_from(attempts + 1).unwrap_or(u32::MAX)))))
}

/// Opens a claim on the group's unclaimed held items; `None` when there are none.
async fn open(
    tx: &mut Tx,
    group: &HeldGroup,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<(String, u32)>, StoreError> {
    let key = &group.key;
    let held: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM held WHERE counter = $1 AND partner = $2 AND day = $3 AND recipient = $4
           AND digest_id IS NULL AND digested_at IS NULL ORDER BY id{FOR_UPDATE}"
    )))
    .bind(&key.counter)
    .bind(key.partner.as_str())
    .bind(key.day)
    .bind(&group.recipient)
    .fetch_all(&mut **tx)
    .await?;
    if held.is_empty() {
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
    .bind(stamp(lease_until))
    .bind(Int::try_from(held.len()).unwrap_or(Int::MAX))
    .bind(stamp(now))
    .execute(&mut **tx)
    .await?;
    for held_id in &held {
        sqlx::query("UPDATE held SET digest_id = $1 WHERE id = $2")
            .bind(&id)
            .bind(held_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Some((id, 1)))
}

pub async fn renew(pool: &Pool, digest_id: &str, worker: &str, lease_until: DateTime<Utc>) -> Result<bool, StoreError> {
    let renewed =
        sqlx::query("UPDATE digests SET lease_until = $1 WHERE id = $2 AND claimed_by = $3 AND status = 'claimed'")
            .bind(stamp(lease_until))
            .bind(digest_id)
            .bind(worker)
            .execute(pool)
            .await?;
    Ok(renewed.rows_affected() == 1)
}

fn held_item(row: &DbRow) -> Result<HeldItem, StoreError> {
    let event_json: String = row.try_get("event_json")?;
    let delivery: String = row.try_get("delivery")?;
    record::held_item(row.try_get("log_id")?, &event_json, &delivery)
}

/// Settles a claimed digest: sent, or failed for good. Either way its items
/// leave the held groups, and their log rows say which.
pub async fn settle(
    pool: &Pool,
    digest_id: &str,
    outcome: &DigestOutcome<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (status, log_status, message_id, error) = record::digest_settlement(outcome);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE digests SET status = $1, message_id = $2, sent_at = $3 WHERE id = $4 AND status = 'claimed'")
        .bind(status)
        .bind(message_id)
        .bind(stamp(now))
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
    .bind(stamp(now))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE held SET digested_at = $1 WHERE digest_id = $2")
        .bind(stamp(now))
        .bind(digest_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes items out of a claimed digest (see [`crate::store::DigestStore::drop_held`]).
pub async fn drop_held(
    pool: &Pool,
    digest_id: &str,
    items: &[(i64, Vec<String>)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for (log_id, rules) in items {
        let rules = serde_json::to_string(rules).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "UPDATE notification_log SET status = 'suppressed', rules = $1, updated_at = $2
             WHERE id = $3 AND status = 'held'",
        )
        .bind(rules)
        .bind(stamp(now))
        .bind(log_id)
        .execute(&mut *tx)
        .await?;
        // Out of the digest and of every later group: settled, in no digest.
        sqlx::query("UPDATE held SET digest_id = NULL, digested_at = $1 WHERE log_id = $2 AND digest_id = $3")
            .bind(stamp(now))
            .bind(log_id)
            .bind(digest_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

macro_rules! log_columns {
    () => {
        "event_id, event_type, notification, channel, recipient, status, rules, message_id, digest_id, error, \
         attempts, created_at, updated_at"
    };
}

pub async fn log_for_event(pool: &Pool, event_id: &str) -> Result<Vec<LogEntry>, StoreError> {
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

pub async fn log_for_recipient(pool: &Pool, email: &str, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
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

// `Int` is `i64` on SQLite, where the conversion is the identity.
#[allow(clippy::useless_conversion)]
fn log_entry(row: &DbRow) -> Result<LogEntry, StoreError> {
    let attempts: Int = row.try_get("attempts")?;
    let created: Stamp = row.try_get("created_at")?;
    let updated: Stamp = row.try_get("updated_at")?;
    record::log_entry(
        log_text(row)?,
        i64::from(attempts),
        read_stamp(created),
        read_stamp(updated),
    )
}

fn log_text(row: &DbRow) -> Result<record::LogText, StoreError> {
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
