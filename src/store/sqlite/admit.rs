//! Admission in SQLite: one transaction records the event (or finds it and
//! takes its lease), counts it, applies its directory change and state
//! records, and logs every planned delivery.
//!
//! It is the work of every event, so it runs as one operation on the writer's
//! handle ([`super::group::Write::run`]): one hand-off to the connection for
//! all its statements, instead of one per statement through sqlx. The
//! statements are those of `store/sql/admission.rs`, which PostgreSQL runs.

use std::time::Duration;

use rusqlite::{Connection, params, params_from_iter, types::Value};

use super::{SqliteStore, journal, now, parse_ts, ts};
use crate::event::Event;
use crate::route::{Delivery, DigestKey, StateChange};
use crate::store::{Admission, OutboxItem, Planner, StoreError, StoredDelivery, record};

pub async fn admit(
    store: &SqliteStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
    sent: &[journal::Line],
) -> Result<Admission, StoreError> {
    let mut tx = store.group.begin_statement().await?;
    let admission = tx
        .run(|conn| admit_on(conn, store, event, counters, plan, sent))
        .await?;
    tx.commit().await?;
    if matches!(admission, Admission::Pending { fresh: true, .. }) && record::directory_key(event).is_some() {
        store.directory_written();
    }
    Ok(admission)
}

fn admit_on(
    conn: &Connection,
    store: &SqliteStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
    sent: &[journal::Line],
) -> Result<Admission, StoreError> {
    let id = event.id.as_str();
    let until = store.lease_until();
    let inserted = conn
        .prepare(
            "INSERT INTO events (event_id, event_type, received_at, owner, lease_until) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (event_id) DO NOTHING",
        )?
        .execute(params![id, event.event_type.as_str(), now(), store.owner, until])?
        == 1;
    if !inserted {
        return seen_before(conn, store, id, &until, sent);
    }
    let positions = count(conn, counters)?;
    let plan = plan(&positions);
    apply_directory(conn, event)?;
    apply_records(conn, event, &plan.records)?;
    let event_json = record::cloudevent_json(event);
    let received = now();
    if store.archive {
        conn.prepare(
            "INSERT INTO archive (event_id, event_type, event_time, received_at, event_json)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (event_id) DO NOTHING",
        )?
        .execute(params![
            id,
            event.event_type.as_str(),
            ts(event.time),
            received,
            event_json
        ])?;
    }
    log_deliveries(conn, event, &plan.deliveries, &received, &event_json)?;
    let items = claim_pending(conn, store, id)?;
    Ok(Admission::Pending { fresh: true, items })
}

/// An event recorded before: done, leased by another worker, or resumed by this one.
fn seen_before(
    conn: &Connection,
    store: &SqliteStore,
    id: &str,
    until: &str,
    sent: &[journal::Line],
) -> Result<Admission, StoreError> {
    super::mark_lines_sent_on(conn, sent)?;
    let (completed, owner, lease): (Option<String>, Option<String>, Option<String>) = conn
        .prepare("SELECT completed_at, owner, lease_until FROM events WHERE event_id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if completed.is_some() {
        return Ok(Admission::Done);
    }
    if let (Some(owner), Some(lease)) = (owner, lease.as_deref().and_then(parse_ts))
        && owner != store.owner
        && lease > chrono::Utc::now()
    {
        let retry_in = (lease - chrono::Utc::now()).to_std().unwrap_or_default();
        return Ok(Admission::Busy {
            retry_in: retry_in.max(Duration::from_millis(50)),
        });
    }
    conn.prepare("UPDATE events SET owner = ?1, lease_until = ?2 WHERE event_id = ?3")?
        .execute(params![store.owner, until, id])?;
    let items = claim_pending(conn, store, id)?;
    Ok(Admission::Pending { fresh: false, items })
}

/// Counts the event under each key, in key order; each post-increment position.
fn count(conn: &Connection, counters: &[DigestKey]) -> Result<Vec<(DigestKey, u32)>, StoreError> {
    let mut order: Vec<&DigestKey> = counters.iter().collect();
    order.sort();
    let mut statement = conn.prepare(
        "INSERT INTO digest_counters (counter, partner, day, count) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (counter, partner, day) DO UPDATE SET count = digest_counters.count + 1 RETURNING count",
    )?;
    let mut positions = Vec::with_capacity(counters.len());
    for key in order {
        let count: i64 = statement.query_row(params![key.counter, key.partner.as_str(), day(key)], |r| r.get(0))?;
        positions.push((key.clone(), u32::try_from(count).unwrap_or(u32::MAX)));
    }
    Ok(positions)
}

/// A digest day as SQLite stores it (`YYYY-MM-DD`, as sqlx writes a date).
fn day(key: &DigestKey) -> String {
    key.day.format("%F").to_string()
}

/// Stores a directory event under the next directory sequence number; last
/// writer wins by (event time, event id).
fn apply_directory(conn: &Connection, event: &Event) -> Result<(), StoreError> {
    let Some(key) = record::directory_key(event) else {
        return Ok(());
    };
    let seq: i64 = conn
        .prepare("UPDATE directory_version SET seq = seq + 1 WHERE id = 1 RETURNING seq")?
        .query_row([], |r| r.get(0))?;
    conn.prepare(
        "INSERT INTO directory (key, seq, event_time, event_id, event_json) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, event_time = excluded.event_time,
           event_id = excluded.event_id, event_json = excluded.event_json
         WHERE (excluded.event_time, excluded.event_id) > (directory.event_time, directory.event_id)",
    )?
    .execute(params![
        key,
        seq,
        ts(event.time),
        event.id.as_str(),
        record::cloudevent_json(event)
    ])?;
    Ok(())
}

/// Records the statuses the event's `record` rules ask for.
fn apply_records(conn: &Connection, event: &Event, records: &[StateChange]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut statement = conn.prepare(
        "INSERT INTO referral_states (referral, receiver, status, rule, event_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (referral, receiver) DO UPDATE SET status = excluded.status, rule = excluded.rule,
           event_id = excluded.event_id, updated_at = excluded.updated_at",
    )?;
    for change in records {
        statement.execute(params![
            change.referral,
            change.receiver.as_deref().unwrap_or(""),
            change.status,
            change.rule,
            event.id.as_str(),
            now()
        ])?;
    }
    Ok(())
}

/// Logs every planned delivery (a multi-row insert per few hundred), and keeps
/// each held one for its digest.
fn log_deliveries(
    conn: &Connection,
    event: &Event,
    deliveries: &[Delivery],
    now: &str,
    event_json: &str,
) -> Result<(), StoreError> {
    let id = event.id.as_str();
    let rows = record::log_rows(deliveries)?;
    let mut held: Vec<(i64, (&DigestKey, &Delivery))> = Vec::new();
    for chunk in rows.chunks(record::ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO notification_log
               (event_id, event_type, notification, channel, recipient, status, rules, delivery, created_at, updated_at)
             VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 10);
        for (i, r) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            sql.push_str("?, ?, ?, ?, ?, ?, ?, ?, ?, ?");
            sql.push(')');
            for text in [
                id,
                event.event_type.as_str(),
                &r.delivery.notification,
                &r.channel,
                &r.recipient,
                r.status,
                &r.rules,
                &r.stored,
                now,
                now,
            ] {
                values.push(Value::Text(text.to_owned()));
            }
        }
        sql.push_str(
            " ON CONFLICT (event_id, notification, channel, recipient) DO NOTHING
              RETURNING id, notification, channel, recipient",
        );
        let mut statement = conn.prepare(&sql)?;
        let mut returned = statement.query(params_from_iter(values))?;
        while let Some(row) = returned.next()? {
            let (log_id, notification, channel, recipient): (i64, String, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            if let Some(digest) = record::held_row(chunk, &notification, &channel, &recipient) {
                held.push((log_id, digest));
            }
        }
    }
    let mut statement = conn.prepare(
        "INSERT INTO held (log_id, counter, partner, day, recipient, created_at, event_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (log_id, (key, delivery)) in held {
        statement.execute(params![
            log_id,
            key.counter,
            key.partner.as_str(),
            day(key),
            delivery.recipient.email.key(),
            now,
            event_json
        ])?;
    }
    Ok(())
}

/// Claims the event's pending deliveries (all but those another worker's live claim holds), in log order.
fn claim_pending(conn: &Connection, store: &SqliteStore, event_id: &str) -> Result<Vec<OutboxItem>, StoreError> {
    let mut statement = conn.prepare(
        "UPDATE notification_log SET owner = ?1, claim_until = ?2
         WHERE event_id = ?3 AND status = 'pending' AND (owner IS NULL OR owner = ?1 OR claim_until < ?4)
         RETURNING id, delivery",
    )?;
    let mut rows = statement.query(params![store.owner, store.lease_until(), event_id, now()])?;
    let mut items = Vec::new();
    while let Some(row) = rows.next()? {
        let raw: String = row.get(1)?;
        items.push(OutboxItem {
            log_id: row.get(0)?,
            delivery: StoredDelivery::parse(&raw)?,
        });
    }
    items.sort_by_key(|item| item.log_id);
    Ok(items)
}
