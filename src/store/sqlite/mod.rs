//! The embedded store: SQLite in WAL mode, for one worker. The writes of
//! every event (admission, completion, Action Center entries) are whole
//! operations on a writer thread of their own, group-committed (`writer`);
//! the rarer writes (digests, preferences, inbox marks) go through one sqlx
//! connection while that thread leaves it the database; `store.max_connections`
//! sqlx readers serve the HTTP API, the directory and routing state.
//! Migrations run at open. Leases work as in PostgreSQL, so the behaviour
//! (and the test matrix) is the same on both.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

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
type Backend = SqliteStore;

impl SqliteStore {
    fn read_pool(&self) -> &dialect::Pool {
        &self.reader
    }

    fn write_pool(&self) -> &dialect::Pool {
        &self.writer
    }

    /// The sqlx writer may write while this is held: the writer thread leaves it the database.
    async fn write_turn(&self) -> Result<writer::Paused, StoreError> {
        self.hot.pause().await
    }

    /// After a directory or preference change committed.
    fn directory_written(&self) {
        self.directory_writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One worker writes an SQLite store: its own count of those changes tells when to read them.
    fn hint(&self) -> Option<u64> {
        Some(self.directory_writes.load(std::sync::atomic::Ordering::Acquire))
    }
}
mod journal;
mod writer;

/// What the SQL written once for both stores (`store/sql/`) needs to know of
/// SQLite: timestamps are RFC 3339 text, and the single writer connection
/// already serialises every claim.
mod dialect {
    use chrono::{DateTime, Utc};

    use crate::store::{HeldGroup, StoreError};

    pub type Db = sqlx::Sqlite;
    pub type Pool = sqlx::SqlitePool;
    pub type DbRow = sqlx::sqlite::SqliteRow;
    pub type Tx = sqlx::Transaction<'static, Db>;
    pub type Int = i64;
    pub type Stamp = String;
    pub const FOR_UPDATE: &str = "";
    /// The column giving the order Action Center entries were stored in.
    pub const ENTRY_SEQ: &str = "rowid";

    pub fn stamp(t: DateTime<Utc>) -> Stamp {
        super::ts(t)
    }

    pub fn read_stamp(raw: Stamp) -> DateTime<Utc> {
        super::parse_ts(&raw).unwrap_or_default()
    }

    /// One connection writes at a time: a claim has the group to itself.
    pub async fn lock_group(_tx: &mut Tx, _group: &HeldGroup) -> Result<bool, StoreError> {
        Ok(true)
    }
}

use super::{
    ActionCenterEntry, Admission, EntryStore, EventStore, InboxCounts, InboxPage, InboxQuery, Mark, Planner, StoreError,
};
use crate::event::Event;
use crate::route::{DigestKey, MemoryState};

pub struct SqliteStore {
    /// One sqlx connection for the writes off the hot path (see `write_turn`).
    writer: SqlitePool,
    /// The writer thread, for the writes of every event: batched into shared commits.
    hot: writer::Writer,
    /// Read-only connections for the reads of every event, run in place.
    point: writer::PointReads,
    reader: SqlitePool,
    /// Where sent deliveries are written down at once.
    journal: journal::Journal,
    /// Journal lines per event, committed with the event's `complete` or `release`.
    uncommitted: Mutex<HashMap<String, Vec<journal::Line>>>,
    /// This worker's name in leases.
    owner: String,
    lease: Duration,
    /// Whether admission keeps each event's body (`archive.retention` > 0).
    archive: bool,
    /// Directory and preference changes this process committed (see `DirectoryStore::change_hint`).
    directory_writes: std::sync::atomic::AtomicU64,
}

fn now() -> String {
    ts(Utc::now())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw).ok().map(|t| t.with_timezone(&Utc))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `sqlite://PATH` and migrates it.
    pub async fn open(url: &str, settings: &crate::config::Store, archive: bool) -> Result<Self, StoreError> {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .unwrap_or_default();
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::file(format!("creating {}", parent.display()), e))?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives a power cut, which is what acking relies on.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // sqlx's connections serve the rarer reads and writes: a small page cache each keeps the
            // worker's memory from rising with the database (SQLite's default is about 2 MiB each).
            .pragma("cache_size", "-256");
        if path.is_empty() || path.starts_with(':') || url.contains("mode=memory") {
            return Err(StoreError::Unsupported(format!(
                "`{url}` is an in-memory database: the embedded store needs a file (sqlite://PATH)"
            )));
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let hot = writer::Writer::open(std::path::Path::new(path), Duration::from_secs(5))?;
        let (journal, leftover) = journal::Journal::open(std::path::Path::new(path))?;
        hot.run(move |conn| mark_lines_sent(conn, &leftover)).await?;
        journal.applied()?;
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            point: writer::PointReads::new(std::path::Path::new(path)),
            hot,
            writer,
            reader,
            journal,
            uncommitted: Mutex::default(),
            owner: super::worker_id(),
            lease: settings.lease,
            archive,
            directory_writes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Takes the journal lines of an event, to commit them with the next write.
    fn take_lines(&self, event_id: &str) -> Vec<journal::Line> {
        self.uncommitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id)
            .unwrap_or_default()
    }

    /// After the write that carried them: committed lines are done with; lines
    /// of a failed write wait for the next one (and are in the journal meanwhile).
    fn settle_lines(&self, event_id: &str, lines: Vec<journal::Line>, committed: bool) {
        if lines.is_empty() {
            return;
        }
        if committed {
            self.journal.committed(&lines);
        } else {
            self.keep_lines(event_id, lines);
        }
    }

    fn keep_lines(&self, event_id: &str, lines: Vec<journal::Line>) {
        self.uncommitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event_id.to_string())
            .or_default()
            .extend(lines);
    }

    /// When a lease taken now runs out.
    fn lease_until(&self) -> String {
        ts(Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX))
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn admit(&self, event: &Event, counters: &[DigestKey], plan: Planner<'_>) -> Result<Admission, StoreError> {
        // Sends written down for this event and not yet committed go in first,
        // so a retried event never claims what already went out.
        let lines = self.take_lines(event.id.as_str());
        let result = admit::admit(self, event, counters, plan, &lines).await;
        self.settle_lines(event.id.as_str(), lines, result.is_ok());
        result
    }

    async fn claim_delivery(&self, log_id: i64) -> Result<bool, StoreError> {
        let (owner, until) = (self.owner.clone(), self.lease_until());
        self.hot
            .run(move |conn| {
                let claimed = conn
                    .prepare_cached(
                        "UPDATE notification_log SET owner = ?1, claim_until = ?2
                         WHERE id = ?3 AND status = 'pending' AND (owner IS NULL OR owner = ?1 OR claim_until < ?4)",
                    )?
                    .execute((&owner, &until, log_id, now()))?
                    == 1;
                if claimed {
                    conn.prepare_cached(
                        "UPDATE events SET lease_until = ?1 WHERE owner = ?2
                           AND event_id = (SELECT event_id FROM notification_log WHERE id = ?3)",
                    )?
                    .execute((&until, &owner, log_id))?;
                }
                Ok(claimed)
            })
            .await
    }

    async fn release(&self, event_id: &str) -> Result<(), StoreError> {
        let lines = self.take_lines(event_id);
        let (id, owner, sent) = (event_id.to_string(), self.owner.clone(), lines.clone());
        let result = self
            .hot
            .run(move |conn| {
                mark_lines_sent(conn, &sent)?;
                conn.prepare_cached(
                    "UPDATE notification_log SET owner = NULL, claim_until = NULL
                     WHERE event_id = ?1 AND owner = ?2 AND status = 'pending'",
                )?
                .execute((&id, &owner))?;
                conn.prepare_cached(
                    "UPDATE events SET owner = NULL, lease_until = NULL WHERE event_id = ?1 AND owner = ?2",
                )?
                .execute((&id, &owner))?;
                Ok(())
            })
            .await;
        self.settle_lines(event_id, lines, result.is_ok());
        result
    }

    async fn mark_sent(&self, event_id: &str, log_id: i64, message_id: Option<&str>) -> Result<(), StoreError> {
        // Written down now; in the database with the event's `complete` (or `release`).
        let line = self.journal.write(log_id, message_id)?;
        self.keep_lines(event_id, vec![line]);
        Ok(())
    }

    async fn state_for(&self, event: &Event) -> Result<MemoryState, StoreError> {
        let Some(referral) = event.referral() else {
            return Ok(MemoryState::new());
        };
        let id = referral.id.as_str();
        self.point.read(|conn| {
            let mut select = conn.prepare_cached("SELECT receiver, status FROM referral_states WHERE referral = ?1")?;
            let rows = select
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<(String, String)>, _>>()?;
            Ok(super::record::referral_state(id, rows))
        })
    }

    async fn mark_failed(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        self.note(log_id, error, true).await
    }

    async fn note_attempt(&self, log_id: i64, error: &str) -> Result<(), StoreError> {
        self.note(log_id, error, false).await
    }

    async fn complete(&self, event_id: &str) -> Result<bool, StoreError> {
        let lines = self.take_lines(event_id);
        let (id, sent) = (event_id.to_string(), lines.clone());
        let result = self
            .hot
            .run(move |conn| {
                mark_lines_sent(conn, &sent)?;
                let done = conn
                    .prepare_cached(
                        "UPDATE events SET completed_at = COALESCE(completed_at, ?1), owner = NULL, lease_until = NULL
                         WHERE event_id = ?2
                           AND NOT EXISTS (SELECT 1 FROM notification_log WHERE event_id = ?2 AND status = 'pending')",
                    )?
                    .execute((now(), &id))?;
                Ok(done == 1)
            })
            .await;
        self.settle_lines(event_id, lines, result.is_ok());
        result
    }
}

impl SqliteStore {
    /// Notes an error on a delivery's log row: a transient one (counted as an
    /// attempt), or, when `failed`, the reason it will never go out.
    async fn note(&self, log_id: i64, error: &str, failed: bool) -> Result<(), StoreError> {
        let error = error.to_string();
        self.hot
            .run(move |conn| {
                let sql = if failed {
                    "UPDATE notification_log SET status = 'failed', error = ?1, attempts = attempts + 1, owner = NULL,
                       claim_until = NULL, updated_at = ?2 WHERE id = ?3"
                } else {
                    "UPDATE notification_log SET error = ?1, attempts = attempts + 1, updated_at = ?2 WHERE id = ?3"
                };
                conn.prepare_cached(sql)?.execute((&error, now(), log_id))?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl EntryStore for SqliteStore {
    async fn put_entry(&self, e: &ActionCenterEntry) -> Result<(), StoreError> {
        let e = e.clone();
        self.hot
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO action_center (id, user_key, partner_id, event_id, notification, category, priority,
                       title, body, link, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(rusqlite::params![
                    e.id,
                    e.user,
                    e.partner_id,
                    e.event_id,
                    e.notification,
                    e.category,
                    e.priority,
                    e.title,
                    e.body,
                    e.link,
                    ts(e.created_at),
                    e.expires_at.map(ts),
                ])?;
                Ok(())
            })
            .await
    }

    async fn inbox(&self, user: &str, query: &InboxQuery<'_>) -> Result<InboxPage, StoreError> {
        entries::inbox(&self.reader, user, query).await
    }

    async fn entries_after(&self, user: &str, after: i64) -> Result<Vec<(i64, ActionCenterEntry)>, StoreError> {
        entries::after(&self.reader, user, after).await
    }

    async fn newest_entry(&self, user: &str) -> Result<i64, StoreError> {
        entries::newest(&self.reader, user).await
    }

    async fn counts(&self, user: &str) -> Result<InboxCounts, StoreError> {
        entries::counts(&self.reader, user).await
    }

    async fn entry(&self, user: &str, id: &str) -> Result<Option<ActionCenterEntry>, StoreError> {
        entries::one(&self.reader, user, id).await
    }

    async fn mark(&self, user: &str, id: Option<&str>, mark: Mark) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        entries::mark(&self.writer, user, id, mark).await
    }
}

/// Records deliveries as sent (those still pending: a line applied twice changes nothing).
fn mark_lines_sent(conn: &rusqlite::Connection, lines: &[journal::Line]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let now = now();
    let mut update = conn.prepare_cached(
        "UPDATE notification_log SET status = 'sent', message_id = ?1, error = NULL, attempts = attempts + 1,
           owner = NULL, claim_until = NULL, updated_at = ?2
         WHERE id = ?3 AND status = 'pending'",
    )?;
    for line in lines {
        update.execute((line.message_id.as_deref(), &now, line.log_id))?;
    }
    Ok(())
}
