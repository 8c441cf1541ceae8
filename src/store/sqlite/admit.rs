//! Admission in SQLite, as one operation on the writer thread: it records
//! the event (or finds it and takes its lease), counts it, applies its
//! directory change and state records, archives it, and logs and claims
//! every planned delivery, in one savepoint of the writer's batch.
//!
//! Only the plan is made on the async side: it needs the event's digest
//! positions, which exist only once the event is counted inside the
//! transaction, so the writer hands them over and waits for the plan.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{SqliteStore, journal::Line, mark_lines_sent, now, parse_ts, ts};
use crate::event::Event;
use crate::route::{Decision, Delivery, DigestKey, Plan, StateChange};
use crate::store::{Admission, OutboxItem, Planner, StoreError, StoredDelivery, record};

pub async fn admit(
    store: &SqliteStore,
    event: &Event,
    counters: &[DigestKey],
    plan: Planner<'_>,
    sent: &[Line],
) -> Result<Admission, StoreError> {
    let json = record::cloudevent_json(event);
    let directory = record::directory_key(event);
    let written = directory.is_some();
    let mut counters = counters.to_vec();
    counters.sort();
    let job = Job {
        id: event.id.to_string(),
        event_type: event.event_type.to_string(),
        event_time: ts(event.time),
        owner: store.owner.clone(),
        until: store.lease_until(),
        counters,
        sent: sent.to_vec(),
        directory,
        archive: store.archive,
        json,
    };
    let (positions_tx, positions) = oneshot::channel();
    let (planned_tx, planned) = mpsc::channel();
    let admitted = store.hot.run(move |conn| job.run(conn, positions_tx, &planned));
    let planning = async {
        // No positions: the event was seen before (nothing to plan), or the operation failed.
        if let Ok(positions) = positions.await {
            let _ = planned_tx.send(Planned::of(&plan(&positions)));
        }
    };
    let (admission, ()) = tokio::join!(admitted, planning);
    let admission = admission?;
    if written && matches!(admission, Admission::Pending { fresh: true, .. }) {
        store.directory_written();
    }
    Ok(admission)
}

/// What admission writes, owned, for the writer thread.
struct Job {
    id: String,
    event_type: String,
    event_time: String,
    owner: String,
    until: String,
    /// In key order, so two writers never wait on each other's counters in a cycle.
    counters: Vec<DigestKey>,
    sent: Vec<Line>,
    /// The directory key the event replaces, if it is a directory change.
    directory: Option<String>,
    archive: bool,
    /// The event as a structured CloudEvent (directory and archive).
    json: String,
}

/// The plan, as the rows it writes.
struct Planned {
    records: Vec<StateChange>,
    rows: Vec<Row>,
}

struct Row {
    notification: String,
    channel: String,
    recipient: String,
    status: &'static str,
    rules: String,
    stored: String,
    /// A held delivery's digest.
    held: Option<DigestKey>,
    /// A pending delivery, to send once logged.
    send: Option<Delivery>,
}

impl Planned {
    fn of(plan: &Plan) -> Result<Self, StoreError> {
        let rows = record::log_rows(&plan.deliveries)?
            .into_iter()
            .map(|r| Row {
                held: (r.delivery.decision == Decision::Hold)
                    .then(|| r.delivery.digest.clone())
                    .flatten(),
                send: (r.delivery.decision == Decision::Send).then(|| Delivery::from(StoredDelivery::from(r.delivery))),
                notification: r.delivery.notification.clone(),
                channel: r.channel,
                recipient: r.recipient,
                status: r.status,
                rules: r.rules,
                stored: r.stored,
            })
            .collect();
        Ok(Self {
            records: plan.records.clone(),
            rows,
        })
    }
}

impl Job {
    fn run(
        self,
        conn: &Connection,
        positions: oneshot::Sender<Vec<(DigestKey, u32)>>,
        planned: &mpsc::Receiver<Result<Planned, StoreError>>,
    ) -> Result<Admission, StoreError> {
        let now = now();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO events (event_id, event_type, received_at, owner, lease_until) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (event_id) DO NOTHING",
            )?
            .execute((&self.id, &self.event_type, &now, &self.owner, &self.until))?
            == 1;
        if !inserted {
            return self.seen_before(conn, &now);
        }
        let counted = self.count(conn)?;
        positions
            .send(counted)
            .map_err(|_| StoreError::Batch("admission was abandoned".into()))?;
        let plan = planned
            .recv()
            .map_err(|_| StoreError::Batch("admission was abandoned".into()))??;
        self.apply_directory(conn)?;
        for change in &plan.records {
            conn.prepare_cached(
                "INSERT INTO referral_states (referral, receiver, status, rule, event_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (referral, receiver) DO UPDATE SET status = excluded.status, rule = excluded.rule,
                   event_id = excluded.event_id, updated_at = excluded.updated_at",
            )?
            .execute((
                &change.referral,
                change.receiver.as_deref().unwrap_or(""),
                &change.status,
                &change.rule,
                &self.id,
                &now,
            ))?;
        }
        if self.archive {
            conn.prepare_cached(
                "INSERT INTO archive (event_id, event_type, event_time, received_at, event_json)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (event_id) DO NOTHING",
            )?
            .execute((&self.id, &self.event_type, &self.event_time, &now, &self.json))?;
        }
        let items = self.log(conn, plan.rows, &now)?;
        Ok(Admission::Pending { fresh: true, items })
    }

    /// Counts the event under each key; each post-increment position.
    fn count(&self, conn: &Connection) -> Result<Vec<(DigestKey, u32)>, StoreError> {
        let mut count = conn.prepare_cached(
            "INSERT INTO digest_counters (counter, partner, day, count) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (counter, partner, day) DO UPDATE SET count = digest_counters.count + 1 RETURNING count",
        )?;
        self.counters
            .iter()
            .map(|key| {
                let n: i64 = count.query_row((&key.counter, key.partner.as_str(), day(key)), |r| r.get(0))?;
                Ok((key.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
            })
            .collect()
    }

    /// Stores a directory change under the next directory sequence number;
    /// the last writer by (event time, event id) wins.
    fn apply_directory(&self, conn: &Connection) -> Result<(), StoreError> {
        let Some(key) = &self.directory else { return Ok(()) };
        let seq: i64 = conn
            .prepare_cached("UPDATE directory_version SET seq = seq + 1 WHERE id = 1 RETURNING seq")?
            .query_row([], |r| r.get(0))?;
        conn.prepare_cached(
            "INSERT INTO directory (key, seq, event_time, event_id, event_json) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, event_time = excluded.event_time,
               event_id = excluded.event_id, event_json = excluded.event_json
             WHERE (excluded.event_time, excluded.event_id) > (directory.event_time, directory.event_id)",
        )?
        .execute((key, seq, &self.event_time, &self.id, &self.json))?;
        Ok(())
    }

    /// Logs every planned delivery (claiming the pending ones for this
    /// worker) and keeps each held one for its digest; the claimed ones, in log order.
    fn log(&self, conn: &Connection, rows: Vec<Row>, now: &str) -> Result<Vec<OutboxItem>, StoreError> {
        let mut insert = conn.prepare_cached(
            "INSERT INTO notification_log (event_id, event_type, notification, channel, recipient, status, rules,
               delivery, created_at, updated_at, owner, claim_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)
             ON CONFLICT (event_id, notification, channel, recipient) DO NOTHING RETURNING id",
        )?;
        let mut items = Vec::new();
        for row in rows {
            let claim = row.send.is_some();
            let log_id: Option<i64> = insert
                .query_row(
                    rusqlite::params![
                        self.id,
                        self.event_type,
                        row.notification,
                        row.channel,
                        row.recipient,
                        row.status,
                        row.rules,
                        row.stored,
                        now,
                        claim.then_some(&self.owner),
                        claim.then_some(&self.until),
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            // None: the plan named this delivery twice, and it is logged once.
            let Some(log_id) = log_id else { continue };
            if let Some(key) = &row.held {
                conn.prepare_cached(
                    "INSERT INTO held (log_id, counter, partner, day, recipient, created_at, event_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute((
                    log_id,
                    &key.counter,
                    key.partner.as_str(),
                    day(key),
                    &row.recipient,
                    now,
                    &self.json,
                ))?;
            }
            if let Some(delivery) = row.send {
                items.push(OutboxItem { log_id, delivery });
            }
        }
        Ok(items)
    }

    /// An event recorded before: done, another worker's, or ours to resume.
    fn seen_before(self, conn: &Connection, now: &str) -> Result<Admission, StoreError> {
        // What was sent for it and not yet recorded goes in first, so nothing sent is claimed again.
        mark_lines_sent(conn, &self.sent)?;
        let (completed, owner, lease): (Option<String>, Option<String>, Option<String>) = conn
            .prepare_cached("SELECT completed_at, owner, lease_until FROM events WHERE event_id = ?1")?
            .query_row([&self.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if completed.is_some() {
            return Ok(Admission::Done);
        }
        if let (Some(owner), Some(lease)) = (owner, lease.as_deref().and_then(parse_ts))
            && owner != self.owner
            && lease > chrono::Utc::now()
        {
            let retry_in = (lease - chrono::Utc::now()).to_std().unwrap_or_default();
            return Ok(Admission::Busy {
                retry_in: retry_in.max(Duration::from_millis(50)),
            });
        }
        conn.prepare_cached("UPDATE events SET owner = ?1, lease_until = ?2 WHERE event_id = ?3")?
            .execute((&self.owner, &self.until, &self.id))?;
        // All its pending deliveries but those another worker's live claim holds, in log order.
        let mut claim = conn.prepare_cached(
            "UPDATE notification_log SET owner = ?1, claim_until = ?2
             WHERE event_id = ?3 AND status = 'pending' AND (owner IS NULL OR owner = ?1 OR claim_until < ?4)
             RETURNING id, delivery",
        )?;
        let mut items = claim
            .query_map((&self.owner, &self.until, &self.id, now), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .map(|row| {
                let (log_id, raw) = row?;
                Ok(OutboxItem {
                    log_id,
                    delivery: StoredDelivery::parse(&raw)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        items.sort_by_key(|item| item.log_id);
        Ok(Admission::Pending { fresh: false, items })
    }
}

/// A digest day as stored: `YYYY-MM-DD`.
fn day(key: &DigestKey) -> String {
    key.day.format("%F").to_string()
}
