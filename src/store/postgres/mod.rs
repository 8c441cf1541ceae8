//! The shared store: PostgreSQL through a sqlx `PgPool` of
//! `store.max_connections`, for several workers on one database. Admission
//! locks the event's row, so exactly one worker records an event; leases on
//! events and claims on deliveries (timed by the database's clock) keep two
//! workers from sending the same delivery and let a crashed worker's work be
//! taken over once its lease runs out.

use async_trait::async_trait;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

mod admission;
mod admit;
// Written once for both backends and compiled into each with its own `dialect`.
#[allow(clippy::duplicate_mod)]
#[path = "../sql/digests.rs"]
mod digests;
#[allow(clippy::duplicate_mod)]
#[path = "../sql/entries.rs"]
mod entries;
#[allow(clippy::duplicate_mod)]
#[path = "../sql/events.rs"]
mod events;
#[allow(clippy::duplicate_mod)]
#[path = "../sql/preferences.rs"]
mod preferences;
#[allow(clippy::duplicate_mod)]
#[path = "../sql/traits.rs"]
mod traits;

/// The backend the shared trait implementations (`store/sql/traits.rs`) are for.
type Backend = PgStore;

impl PgStore {
    fn read_pool(&self) -> &dialect::Pool {
        &self.pool
    }

    fn write_pool(&self) -> &dialect::Pool {
        &self.pool
    }

    /// Connections write side by side in PostgreSQL: nothing to wait for.
    #[allow(clippy::unused_async)]
    async fn write_turn(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Any worker may write: nothing to count here.
    fn directory_written(&self) {}

    /// Any worker may write: the cache asks the store every time.
    fn hint(&self) -> Option<u64> {
        None
    }
}

/// What the SQL written once for both stores (`store/sql/`) needs to know of
/// PostgreSQL: native timestamps, and claims serialised per recipient group
/// by a transaction-scoped advisory lock and `FOR UPDATE`.
mod dialect {
    use chrono::{DateTime, Utc};

    use crate::store::{HeldGroup, StoreError};

    pub type Db = sqlx::Postgres;
    pub type Pool = sqlx::PgPool;
    pub type DbRow = sqlx::postgres::PgRow;
    pub type Tx = sqlx::Transaction<'static, Db>;
    pub type Conn = sqlx::PgConnection;
    pub type Int = i32;
    pub type Stamp = DateTime<Utc>;
    pub const FOR_UPDATE: &str = " FOR UPDATE";
    /// The column giving the order Action Center entries were stored in.
    pub const ENTRY_SEQ: &str = "seq";

    pub fn stamp(t: DateTime<Utc>) -> Stamp {
        t
    }

    pub fn read_stamp(t: Stamp) -> DateTime<Utc> {
        t
    }

    /// Takes the group's advisory lock for the transaction; false when
    /// another worker is claiming it now.
    pub async fn lock_group(tx: &mut Tx, group: &HeldGroup) -> Result<bool, StoreError> {
        let key = &group.key;
        let lock = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            key.counter, key.partner, key.day, group.recipient
        );
        Ok(
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(&lock)
                .fetch_one(&mut **tx)
                .await?,
        )
    }
}

use super::{
    ActionCenterEntry, Admission, EntryStore, EventStore, InboxCounts, InboxPage, InboxQuery, Mark, Planner, StoreError,
};
use crate::event::Event;
use crate::route::{DigestKey, MemoryState};

pub struct PgStore {
    pool: PgPool,
    /// For `mark_sent`, with `synchronous_commit = off`: its commit returns
    /// without waiting for the WAL flush (a killed worker cannot lose it; a
    /// server crash could, until the event's `complete`, committed in full,
    /// flushes the WAL past it).
    marks: PgPool,
    /// This worker's name in leases.
    owner: String,
    /// `store.lease` in seconds, for `make_interval`.
    lease_secs: f64,
    /// Whether admission keeps each event's body (`archive.retention` > 0).
    archive: bool,
}

impl PgStore {
    /// Connects to `settings.url` and migrates the database (one worker at a
    /// time: sqlx holds an advisory lock while migrating).
    pub async fn open(settings: &crate::config::Store, archive: bool) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect(settings.url.expose())
            .await
            .map_err(|e| connect_error(settings.url.expose(), e))?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let options = PgConnectOptions::from_str(settings.url.expose())?.options([("synchronous_commit", "off")]);
        let marks = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            marks,
            owner: super::worker_id(),
            lease_secs: settings.lease.as_secs_f64(),
            archive,
        })
    }
}

/// A failed first connection; a TLS one says which server, which name its
/// certificate must carry (for `verify-full`) and what it was checked against.
fn connect_error(url: &str, e: sqlx::Error) -> StoreError {
    // A certificate that does not verify ends the handshake with an I/O error of kind InvalidData.
    let tls: &dyn std::fmt::Display = match &e {
        sqlx::Error::Tls(tls) => tls,
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => io,
        _ => return e.into(),
    };
    let options = PgConnectOptions::from_str(url).ok();
    let (host, port) = options
        .as_ref()
        .map_or(("?".to_string(), 0), |o| (o.get_host().to_string(), o.get_port()));
    let param = |name: &str| {
        url.split_once('?')
            .and_then(|(_, query)| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))))
            .map(str::to_owned)
    };
    let mode = param("sslmode").unwrap_or_else(|| "prefer".into());
    let trust = crate::config::trust("sslrootcert", &param("sslrootcert").unwrap_or_default());
    let name = if mode == "verify-full" {
        format!(", its certificate must name `{host}`")
    } else {
        String::new()
    };
    StoreError::Tls(format!(
        "PostgreSQL {host}:{port} over TLS (sslmode={mode}{name}; trusted: {trust}): {tls}"
    ))
}

#[async_trait]
impl EventStore for PgStore {
    async fn admit(&self, event: &Event, counters: &[DigestKey], plan: Planner<'_>) -> Result<Admission, StoreError> {
        admit::admit(self, event, counters, plan).await
    }

    async fn claim_delivery(&self, log_id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The event's row first, as admission takes it, so the two never wait on each other in a cycle.
        sqlx::query(
            "SELECT 1 FROM events WHERE event_id = (SELECT event_id FROM notification_log WHERE id = $1) FOR UPDATE",
        )
        .bind(log_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Then claim the delivery and, if that worked, renew the event's lease.
        let claimed: i64 = sqlx::query_scalar(
            "WITH c AS (
               UPDATE notification_log SET owner = $1, claim_until = now() + make_interval(secs => $2)
               WHERE id = $3 AND status = 'pending' AND (owner IS NULL OR owner = $1 OR claim_until < now())
               RETURNING event_id
             ), e AS (
               UPDATE events SET lease_until = now() + make_interval(secs => $2)
               WHERE owner = $1 AND event_id IN (SELECT event_id FROM c)
             )
             SELECT COUNT(*) FROM c",
        )
        .bind(&self.owner)
        .bind(self.lease_secs)
        .bind(log_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed == 1)
    }

    async fn release(&self, event_id: &str) -> Result<(), StoreError> {
        // The event's row first, then its deliveries: the order admission locks them in.
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE events SET owner = NULL, lease_until = NULL WHERE event_id = $1 AND owner = $2")
            .bind(event_id)
            .bind(&self.owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE notification_log SET owner = NULL, claim_until = NULL
             WHERE event_id = $1 AND owner = $2 AND status = 'pending'",
        )
        .bind(event_id)
        .bind(&self.owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_sent(&self, _event_id: &str, log_id: i64, message_id: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_log SET status = 'sent', message_id = $1, error = NULL, attempts = attempts + 1,
               owner = NULL, claim_until = NULL, updated_at = now() WHERE id = $2",
        )
        .bind(message_id)
        .bind(log_id)
        .execute(&self.marks)
        .await?;
        Ok(())
    }

    async fn state_for(&self, event: &Event) -> Result<MemoryState, StoreError> {
        admission::state_for(&self.pool, event).await
    }

    async fn mark_failed(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        admission::note(&mut *self.pool.acquire().await?, log_id, error, true).await
    }

    async fn note_attempt(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        admission::note(&mut *self.pool.acquire().await?, log_id, error, false).await
    }

    async fn complete(&self, event_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE events SET completed_at = COALESCE(completed_at, now()), owner = NULL, lease_until = NULL
             WHERE event_id = $1
               AND NOT EXISTS (SELECT 1 FROM notification_log WHERE event_id = $1 AND status = 'pending')",
        )
        .bind(event_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl EntryStore for PgStore {
    async fn put_entry(&self, e: &ActionCenterEntry) -> Result<(), StoreError> {
        admission::put(&self.pool, e).await
    }

    async fn inbox(&self, user: &str, query: &InboxQuery<'_>) -> Result<InboxPage, StoreError> {
        entries::inbox(&self.pool, user, query).await
    }

    async fn entries_after(&self, user: &str, after: i64) -> Result<Vec<(i64, ActionCenterEntry)>, StoreError> {
        entries::after(&self.pool, user, after).await
    }

    async fn newest_entry(&self, user: &str) -> Result<i64, StoreError> {
        entries::newest(&self.pool, user).await
    }

    async fn counts(&self, user: &str) -> Result<InboxCounts, StoreError> {
        entries::counts(&self.pool, user).await
    }

    async fn entry(&self, user: &str, id: &str) -> Result<Option<ActionCenterEntry>, StoreError> {
        entries::one(&self.pool, user, id).await
    }

    async fn mark(&self, user: &str, id: Option<&str>, mark: Mark) -> Result<u64, StoreError> {
        entries::mark(&self.pool, user, id, mark).await
    }
}
