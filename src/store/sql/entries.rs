//! Action Center entries: stored once per id, read per user a page at a
//! time (newest first, by the position each was stored at). Written once in
//! the SQL both stores speak; compiled into each backend with its `dialect`.

use sqlx::Row;

use super::dialect::{DbRow, ENTRY_SEQ, Pool, Stamp, read_stamp, stamp};
use crate::store::{ActionCenterEntry, InboxCounts, InboxPage, InboxQuery, Mark, StoreError};

/// The columns of an entry, with its position as `seq`.
fn columns() -> String {
    format!(
        "{ENTRY_SEQ} AS seq, id, user_key, partner_id, event_id, notification, category, priority, title, body, link, created_at, expires_at, read_at, seen_at, archived_at"
    )
}

pub async fn inbox(pool: &Pool, user: &str, q: &InboxQuery<'_>) -> Result<InboxPage, StoreError> {
    let limit = i64::from(q.limit.max(1));
    // ENTRY_SEQ is one of the dialects' two constant column names, never input.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM action_center WHERE user_key = $1 AND (NOT $2 OR read_at IS NULL)
               AND (CAST($3 AS TEXT) IS NULL OR category = $3)
               AND ((archived_at IS NOT NULL) = $4)
               AND (CAST($5 AS BIGINT) IS NULL OR {ENTRY_SEQ} < $5)
               AND (expires_at IS NULL OR expires_at > $6)
             ORDER BY {ENTRY_SEQ} DESC LIMIT $7",
        columns()
    )))
    .bind(user)
    .bind(q.unread_only)
    .bind(q.category)
    .bind(q.archived)
    .bind(q.before)
    .bind(stamp(chrono::Utc::now()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    let entries = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(entry)
        .collect::<Result<_, _>>()?;
    Ok(InboxPage { entries, more })
}

pub async fn after(pool: &Pool, user: &str, after: i64) -> Result<Vec<(i64, ActionCenterEntry)>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM action_center WHERE user_key = $1 AND {ENTRY_SEQ} > $2 AND archived_at IS NULL
               AND (expires_at IS NULL OR expires_at > $3)
             ORDER BY {ENTRY_SEQ} LIMIT 500",
        columns()
    )))
    .bind(user)
    .bind(after)
    .bind(stamp(chrono::Utc::now()))
    .fetch_all(pool)
    .await?;
    rows.iter().map(entry).collect()
}

pub async fn newest(pool: &Pool, user: &str) -> Result<i64, StoreError> {
    let n: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(MAX({ENTRY_SEQ}) AS BIGINT) FROM action_center WHERE user_key = $1"
    )))
    .bind(user)
    .fetch_one(pool)
    .await?;
    Ok(n.unwrap_or(0))
}

pub async fn one(pool: &Pool, user: &str, id: &str) -> Result<Option<ActionCenterEntry>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM action_center WHERE user_key = $1 AND id = $2 AND (expires_at IS NULL OR expires_at > $3)",
        columns()
    )))
    .bind(user)
    .bind(id)
    .bind(stamp(chrono::Utc::now()))
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(entry).transpose().map(|e| e.map(|(_, e)| e))
}

fn entry(row: &DbRow) -> Result<(i64, ActionCenterEntry), StoreError> {
    let at = |column: &str| row.try_get::<Option<Stamp>, _>(column);
    let seq: i64 = row.try_get("seq")?;
    Ok((
        seq,
        ActionCenterEntry {
            id: row.try_get("id")?,
            user: row.try_get("user_key")?,
            partner_id: row.try_get("partner_id")?,
            event_id: row.try_get("event_id")?,
            notification: row.try_get("notification")?,
            category: row.try_get("category")?,
            priority: row.try_get("priority")?,
            title: row.try_get("title")?,
            body: row.try_get("body")?,
            link: row.try_get("link")?,
            created_at: read_stamp(row.try_get("created_at")?),
            expires_at: at("expires_at")?.map(read_stamp),
            read: at("read_at")?.is_some(),
            seen: at("seen_at")?.is_some(),
            archived: at("archived_at")?.is_some(),
        },
    ))
}

pub async fn counts(pool: &Pool, user: &str) -> Result<InboxCounts, StoreError> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) FILTER (WHERE read_at IS NULL) AS BIGINT) AS unread,
                CAST(COUNT(*) FILTER (WHERE seen_at IS NULL) AS BIGINT) AS unseen
         FROM action_center WHERE user_key = $1 AND archived_at IS NULL
               AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(user)
    .bind(stamp(chrono::Utc::now()))
    .fetch_one(pool)
    .await?;
    let n = |column: &str| row.try_get::<i64, _>(column).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(InboxCounts {
        unread: n("unread")?,
        unseen: n("unseen")?,
    })
}

pub async fn mark(pool: &Pool, user: &str, id: Option<&str>, mark: Mark) -> Result<u64, StoreError> {
    // Each arm is a constant: the column set and the condition that makes it a change.
    let (set, unchanged) = match mark {
        Mark::Read => ("read_at = $1, seen_at = COALESCE(seen_at, $1)", "read_at IS NULL"),
        Mark::Seen => ("seen_at = $1", "seen_at IS NULL"),
        Mark::Archived => ("archived_at = $1", "archived_at IS NULL"),
        Mark::Restored => ("archived_at = NULL", "archived_at IS NOT NULL"),
    };
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE action_center SET {set}
         WHERE user_key = $2 AND {unchanged} AND (CAST($3 AS TEXT) IS NULL OR id = $3)"
    )))
    .bind(stamp(chrono::Utc::now()))
    .bind(user)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
