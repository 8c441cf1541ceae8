//! Admission in PostgreSQL: one transaction records the event (or locks its
//! row and takes its lease), counts it, applies its directory change (last
//! writer wins by event time) and state records, and logs every planned delivery.

use std::time::Duration;

use sqlx::{Postgres, QueryBuilder, Row, Transaction};

use super::{PgStore, admission, events};
use crate::event::Event;
use crate::route::{Delivery, DigestKey};
use crate::store::{Admission, OutboxItem, Planner, StoreError, StoredDelivery, record};

pub async fn admit(
    store: &PgStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
) -> Result<Admission, StoreError> {
    let id = event.id.as_str();
    let mut tx = store.pool.begin().await?;
    // A concurrent insert of the same id waits for the first transaction and
    // then does nothing: exactly one worker records the event.
    let inserted = sqlx::query(
        "INSERT INTO events (event_id, event_type, received_at, owner, lease_until)
         VALUES ($1, $2, now(), $3, now() + make_interval(secs => $4))
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(id)
    .bind(event.event_type.as_str())
    .bind(&store.owner)
    .bind(store.lease_secs)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return resume(store, tx, id).await;
    }
    let positions = admission::count(&mut tx, counters).await?;
    let plan = plan(&positions);
    admission::apply_directory(&mut tx, event).await?;
    admission::apply_records(&mut tx, event, &plan.records).await?;
    if store.archive {
        events::archive(&mut tx, event, chrono::Utc::now()).await?;
    }
    log_deliveries(&mut tx, event, &plan.deliveries).await?;
    let items = claim_pending(&mut tx, store, id).await?;
    tx.commit().await?;
    Ok(Admission::Pending { fresh: true, items })
}

/// The event was recorded before: done, someone else's, or ours to finish.
async fn resume(store: &PgStore, mut tx: Transaction<'_, Postgres>, id: &str) -> Result<Admission, StoreError> {
    let row = sqlx::query(
        "SELECT completed_at IS NOT NULL AS done, owner,
                EXTRACT(EPOCH FROM (lease_until - now()))::float8 AS lease_left
         FROM events WHERE event_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let done: bool = row.try_get("done")?;
    let owner: Option<String> = row.try_get("owner")?;
    let left: Option<f64> = row.try_get("lease_left")?;
    if done {
        tx.commit().await?;
        return Ok(Admission::Done);
    }
    if let (Some(owner), Some(left)) = (owner, left)
        && owner != store.owner
        && left > 0.0
    {
        tx.commit().await?;
        let retry_in = Duration::try_from_secs_f64(left).unwrap_or_default();
        return Ok(Admission::Busy {
            retry_in: retry_in.max(Duration::from_millis(50)),
        });
    }
    sqlx::query("UPDATE events SET owner = $1, lease_until = now() + make_interval(secs => $2) WHERE event_id = $3")
        .bind(&store.owner)
        .bind(store.lease_secs)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let items = claim_pending(&mut tx, store, id).await?;
    tx.commit().await?;
    Ok(Admission::Pending { fresh: false, items })
}

/// Claims the event's pending deliveries (all but those another worker's live claim holds), in log order.
async fn claim_pending(
    tx: &mut Transaction<'_, Postgres>,
    store: &PgStore,
    event_id: &str,
) -> Result<Vec<OutboxItem>, StoreError> {
    let rows = sqlx::query(
        "UPDATE notification_log SET owner = $2, claim_until = now() + make_interval(secs => $3)
         WHERE event_id = $1 AND status = 'pending' AND (owner IS NULL OR owner = $2 OR claim_until < now())
         RETURNING id, delivery",
    )
    .bind(event_id)
    .bind(&store.owner)
    .bind(store.lease_secs)
    .fetch_all(&mut **tx)
    .await?;
    let mut items = rows
        .into_iter()
        .map(|row| {
            let raw: String = row.try_get("delivery")?;
            Ok(OutboxItem {
                log_id: row.try_get("id")?,
                delivery: StoredDelivery::parse(&raw)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    items.sort_by_key(|item| item.log_id);
    Ok(items)
}

/// Logs every planned delivery, and keeps each held one for its digest:
/// a few statements for the whole plan, not one per delivery.
async fn log_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    event: &Event,
    deliveries: &[Delivery],
) -> Result<(), StoreError> {
    let id = event.id.as_str();
    let rows = record::log_rows(deliveries)?;
    let mut held = Vec::new();
    for chunk in rows.chunks(record::ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Postgres>::new(
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
                .push("now()")
                .push("now()");
        });
        insert.push(
            " ON CONFLICT (event_id, notification, channel, recipient) DO NOTHING
              RETURNING id, notification, channel, recipient",
        );
        for row in insert.build().fetch_all(&mut **tx).await? {
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
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO held (log_id, counter, partner, day, recipient, created_at, event_json) ",
        );
        insert.push_values(chunk, |mut row, (log_id, (key, delivery))| {
            row.push_bind(*log_id)
                .push_bind(&key.counter)
                .push_bind(key.partner.as_str())
                .push_bind(key.day)
                .push_bind(delivery.recipient.email.key())
                .push("now()")
                .push_bind(event_json.as_str());
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}
