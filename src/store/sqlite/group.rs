//! Group commit for the embedded store: concurrent writes share one
//! transaction, so one fsync makes a whole batch durable instead of one each.
//!
//! A write takes the single writer connection, runs in its own savepoint of
//! the transaction open on it (opening one if none is), releases the
//! savepoint and the connection, then waits until a background committer has
//! committed that transaction. So `commit` still returns only once the write
//! is durable (`synchronous=FULL`), which is what acking relies on; a write
//! that fails or is abandoned is rolled back to its savepoint and leaves the
//! others in the batch alone. While one batch is being committed (the fsync),
//! the next one gathers behind the connection's lock.

use std::sync::{Arc, Weak};

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard, mpsc, watch};

use crate::store::StoreError;

/// How one batch ended: `None` until its commit returns.
type Outcome = watch::Sender<Option<Result<(), String>>>;

/// The writer connection with its open batch, if any.
pub struct GroupWriter {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    open: Mutex<Open>,
    /// Wakes the committer; capacity 1, so pending wakes coalesce.
    wake: mpsc::Sender<()>,
}

#[derive(Default)]
struct Open {
    tx: Option<Transaction<'static, Sqlite>>,
    outcome: Option<Outcome>,
    /// A write was dropped inside its savepoint: undo it before anything else runs.
    abandoned: bool,
}

/// One write in progress, holding the writer connection. Finish it with
/// [`Write::commit`]; dropping it rolls the write back.
pub struct Write<'a> {
    guard: MutexGuard<'a, Open>,
    inner: &'a Inner,
    done: bool,
    /// False for statements that stand alone: SQLite undoes a failed
    /// statement by itself, so they need no savepoint (two fewer round trips
    /// to the connection).
    savepoint: bool,
}

impl GroupWriter {
    /// `pool` must have exactly one connection: SQLite has one writer.
    pub fn new(pool: SqlitePool) -> Self {
        let (wake, rx) = mpsc::channel(1);
        let inner = Arc::new(Inner {
            pool,
            open: Mutex::new(Open::default()),
            wake,
        });
        tokio::spawn(commit_batches(Arc::downgrade(&inner), rx));
        Self { inner }
    }

    /// Starts a write: takes the connection and opens a savepoint in the current batch.
    pub async fn begin(&self) -> Result<Write<'_>, StoreError> {
        self.start(true).await
    }

    /// Starts a write of statements that each stand alone: SQLite undoes a
    /// failed statement by itself, and one that succeeded before a later one
    /// failed is kept (no savepoint needed).
    pub async fn begin_statement(&self) -> Result<Write<'_>, StoreError> {
        self.start(false).await
    }

    async fn start(&self, savepoint: bool) -> Result<Write<'_>, StoreError> {
        let mut guard = self.inner.open.lock().await;
        undo_abandoned(&mut guard).await;
        if guard.tx.is_none() {
            guard.tx = Some(self.inner.pool.begin().await?);
            guard.outcome = Some(watch::channel(None).0);
        }
        let mut write = Write {
            guard,
            inner: &self.inner,
            done: false,
            savepoint,
        };
        if savepoint {
            // Marked abandoned (by drop) if this fails: the next user cleans up.
            sqlx::query("SAVEPOINT write").execute(write.conn()).await?;
        }
        Ok(write)
    }
}

impl Write<'_> {
    /// The writer connection, inside this write's savepoint.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.guard.tx.as_mut().expect("a write always has an open batch")
    }

    /// Keeps the write and waits until its batch is committed (durable).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.savepoint {
            sqlx::query("RELEASE SAVEPOINT write").execute(self.conn()).await?;
        }
        self.done = true;
        let mut outcome = self
            .guard
            .outcome
            .as_ref()
            .expect("a write always has an open batch")
            .subscribe();
        let inner = self.inner;
        drop(self);
        let _ = inner.wake.try_send(());
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or(Ok(())))
            .unwrap_or_else(|_| Err("the batch was dropped before it committed".into()));
        result.map_err(StoreError::Batch)
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.done && self.savepoint {
            self.guard.abandoned = true;
            let _ = self.inner.wake.try_send(());
        }
    }
}

/// Rolls an abandoned write back to its savepoint; if even that fails, the
/// whole batch is rolled back and its writers are told it failed.
async fn undo_abandoned(open: &mut Open) {
    if !std::mem::take(&mut open.abandoned) {
        return;
    }
    let Some(tx) = open.tx.as_mut() else { return };
    let undone = match sqlx::query("ROLLBACK TO SAVEPOINT write").execute(&mut **tx).await {
        Ok(_) => sqlx::query("RELEASE SAVEPOINT write")
            .execute(&mut **tx)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = undone {
        open.tx = None; // dropping the transaction rolls it back
        if let Some(outcome) = open.outcome.take() {
            outcome.send_replace(Some(Err(format!("batch rolled back: {e}"))));
        }
    }
}

/// The committer: whenever woken, commits the open batch (if any) and tells its writers.
async fn commit_batches(inner: Weak<Inner>, mut wake: mpsc::Receiver<()>) {
    while wake.recv().await.is_some() {
        let Some(inner) = inner.upgrade() else { return };
        // Holding the lock through the commit is what lets the next batch gather.
        let mut open = inner.open.lock().await;
        undo_abandoned(&mut open).await;
        let (Some(tx), Some(outcome)) = (open.tx.take(), open.outcome.take()) else {
            continue;
        };
        let result = tx.commit().await.map_err(|e| e.to_string());
        outcome.send_replace(Some(result));
    }
}
