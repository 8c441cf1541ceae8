//! Action Center entries in SQLite: stored once per id, read per user.

use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use super::{now, parse_ts, ts};
use crate::store::{ActionCenterEntry, StoreError};

pub async fn put(conn: &mut sqlx::SqliteConnection, e: &ActionCenterEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO action_center (id, user_key, partner_id, event_id, notification, category, priority, title,
               body, link, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
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
    .bind(ts(e.created_at))
    .bind(e.expires_at.map(ts))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list(
    pool: &SqlitePool,
    user: &str,
    unread_only: bool,
    limit: u32,
) -> Result<Vec<ActionCenterEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM action_center WHERE user_key = ? AND (? = 0 OR read_at IS NULL)
               AND (expires_at IS NULL OR expires_at > ?)
             ORDER BY created_at DESC, id LIMIT ?",
    )
    .bind(user)
    .bind(i64::from(unread_only))
    .bind(now())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let created: String = row.try_get("created_at")?;
            let expires: Option<String> = row.try_get("expires_at")?;
            let read_at: Option<String> = row.try_get("read_at")?;
            Ok(ActionCenterEntry {
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
                created_at: parse_ts(&created).unwrap_or_default(),
                expires_at: expires.as_deref().and_then(parse_ts),
                read: read_at.is_some(),
            })
        })
        .collect()
}

pub async fn unread(pool: &SqlitePool, user: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM action_center WHERE user_key = ? AND read_at IS NULL
               AND (expires_at IS NULL OR expires_at > ?)",
    )
    .bind(user)
    .bind(now())
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub async fn mark_read(pool: &SqlitePool, user: &str, id: Option<&str>) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE action_center SET read_at = ? WHERE user_key = ? AND read_at IS NULL AND (? IS NULL OR id = ?)",
    )
    .bind(now())
    .bind(user)
    .bind(id)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
