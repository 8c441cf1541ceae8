//! What every event reads and writes in PostgreSQL: the state its rules
//! look at; admission's parts (counting an
//! event under its digest counters, applying its directory change, recording
//! the state its rules ask for, archiving it, logging its planned
//! deliveries), each inside the caller's admission transaction; and the
//! notes on a delivery and the Action Center entries written as it is sent.
//! (The embedded store writes the same rows on its writer thread:
//! `store/sqlite/admit.rs`.)

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::dialect::{Conn, Db, stamp};
use crate::event::Event;
use crate::route::{Delivery, DigestKey, StateChange};
use crate::store::ActionCenterEntry;
use crate::store::{StoreError, record};

/// Counts the event under each key (in key order, so two transactions never
/// wait on each other's counters in a cycle); returns each post-increment position.
pub async fn count(conn: &mut Conn, counters: &[DigestKey]) -> Result<Vec<(DigestKey, u32)>, StoreError> {
    let mut order: Vec<&DigestKey> = counters.iter().collect();
    order.sort();
    let mut positions = Vec::with_capacity(counters.len());
    for key in order {
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO digest_counters (counter, partner, day, count) VALUES ($1, $2, $3, 1)
             ON CONFLICT (counter, partner, day) DO UPDATE SET count = digest_counters.count + 1 RETURNING count",
        )
        .bind(&key.counter)
        .bind(key.partner.as_str())
        .bind(key.day)
        .fetch_one(&mut *conn)
        .await?;
        positions.push((key.clone(), u32::try_from(count).unwrap_or(u32::MAX)));
    }
    Ok(positions)
}

/// Stores a directory event under the next directory sequence number.
pub async fn apply_directory(conn: &mut Conn, event: &Event) -> Result<(), StoreError> {
    let Some(key) = record::directory_key(event) else {
        return Ok(());
    };
    // The version row's lock serialises directory writers, so readers
    // asking for `seq > n` never miss a change that commits late.
    let seq: i64 = sqlx::query_scalar("UPDATE directory_version SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        .fetch_one(&mut *conn)
        .await?;
    // Last writer wins by (event time, event id): a late or reordered
    // change never replaces a newer one, whatever order workers see them in.
    sqlx::query(
        "INSERT INTO directory (key, seq, event_time, event_id, event_json) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, event_time = excluded.event_time,
           event_id = excluded.event_id, event_json = excluded.event_json
         WHERE (excluded.event_time, excluded.event_id) > (directory.event_time, directory.event_id)",
    )
    .bind(&key)
    .bind(seq)
    .bind(stamp(event.time))
    .bind(event.id.as_str())
    .bind(record::cloudevent_json(event))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the statuses the event's `record` rules ask for.
pub async fn apply_records(conn: &mut Conn, event: &Event, records: &[StateChange]) -> Result<(), StoreError> {
    for change in records {
        sqlx::query(
            "INSERT INTO referral_states (referral, receiver, status, rule, event_id, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (referral, receiver) DO UPDATE SET status = excluded.status, rule = excluded.rule,
               event_id = excluded.event_id, updated_at = excluded.updated_at",
        )
        .bind(&change.referral)
        .bind(change.receiver.as_deref().unwrap_or(""))
        .bind(&change.status)
        .bind(&change.rule)
        .bind(event.id.as_str())
        .bind(stamp(Utc::now()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Logs every planned delivery, and keeps each held one for its digest: a
/// few statements for the whole plan, not one per delivery.
// `Stamp` is text on SQLite (borrowed) and a copied timestamp on PostgreSQL.
#[allow(clippy::needless_borrows_for_generic_args)]
pub async fn log_deliveries(
    conn: &mut Conn,
    event: &Event,
    deliveries: &[Delivery],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = stamp(now);
    let id = event.id.as_str();
    let rows = record::log_rows(deliveries)?;
    let mut held = Vec::new();
    for chunk in rows.chunks(record::ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO notification_log
               (event_id, event_type, notification, channel, recipient, status, rules, delivery, created_at, updated_at) ",
        );
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(id)
                .push_bind(event.event_type.as_str())
                .push_bind(&r.delivery.notification)
                .push_bind(&r.channel)
                .push_bind(&r.recipient)
                .push_bind(r.status)
                .push_bind(&r.rules)
                .push_bind(&r.stored)
                .push_bind(&now)
                .push_bind(&now);
        });
        insert.push(
            " ON CONFLICT (event_id, notification, channel, recipient) DO NOTHING
              RETURNING id, notification, channel, recipient",
        );
        for row in insert.build().fetch_all(&mut *conn).await? {
            let (notification, channel, recipient): (String, String, String) = (
                row.try_get("notification")?,
                row.try_get("channel")?,
                row.try_get("recipient")?,
            );
            if let Some(digest) = record::held_row(chunk, &notification, &channel, &recipient) {
                held.push((row.try_get::<i64, _>("id")?, digest));
            }
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    let event_json = record::cloudevent_json(event);
    for chunk in held.chunks(record::ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO held (log_id, counter, partner, day, recipient, created_at, event_json) ",
        );
        insert.push_values(chunk, |mut row, (log_id, (key, delivery))| {
            row.push_bind(*log_id)
                .push_bind(&key.counter)
                .push_bind(key.partner.as_str())
                .push_bind(key.day)
                .push_bind(delivery.recipient.email.key())
                .push_bind(&now)
                .push_bind(event_json.as_str());
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Notes an error on a delivery's log row: a transient one (counted as an
/// attempt), or, when `failed`, the reason it will never go out.
pub async fn note(conn: &mut Conn, log_id: i64, error: &str, failed: bool) -> Result<(), StoreError> {
    let sql = if failed {
        "UPDATE notification_log SET status = 'failed', error = $1, attempts = attempts + 1, owner = NULL,
           claim_until = NULL, updated_at = $2 WHERE id = $3"
    } else {
        "UPDATE notification_log SET error = $1, attempts = attempts + 1, updated_at = $2 WHERE id = $3"
    };
    sqlx::query(sql)
        .bind(error)
        .bind(stamp(Utc::now()))
        .bind(log_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn archive(conn: &mut Conn, event: &Event, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO archive (event_id, event_type, event_time, received_at, event_json)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.id.as_str())
    .bind(event.event_type.as_str())
    .bind(stamp(event.time))
    .bind(stamp(now))
    .bind(record::cloudevent_json(event))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn put<'c>(db: impl sqlx::Executor<'c, Database = Db>, e: &ActionCenterEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO action_center (id, user_key, partner_id, event_id, notification, category, priority, title,
               body, link, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(&e.user)
    .bind(&e.partner_id)
    .bind(&e.event_id)
    .bind(&e.notification)
    .bind(&e.category)
    .bind(&e.priority)
    .bind(&e.title)
    .bind(&e.body)
    .bind(&e.link)
    .bind(stamp(e.created_at))
    .bind(e.expires_at.map(stamp))
    .execute(db)
    .await?;
    Ok(())
}

/// The statuses recorded for the event's referral and its receivers.
pub async fn state_for(pool: &sqlx::PgPool, event: &Event) -> Result<crate::route::MemoryState, StoreError> {
    let Some(referral) = event.referral() else {
        return Ok(crate::route::MemoryState::new());
    };
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT receiver, status FROM referral_states WHERE referral = $1")
            .bind(referral.id.as_str())
            .fetch_all(pool)
            .await?;
    Ok(record::referral_state(referral.id.as_str(), rows))
}
