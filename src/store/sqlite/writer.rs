//! The embedded store's writer: a thread of its own that owns the one
//! writing connection and takes whole operations (an admission, a
//! completion), not one statement at a time. Each operation runs in its own
//! savepoint of the open transaction; the operations that queued up while
//! the last batch was being made durable run next in one transaction, and
//! one commit (one fsync with `synchronous=FULL`) makes the whole batch
//! durable before any of them is told it is done (group commit). Statements
//! are prepared once and kept.
//!
//! The async side pays one hand-off per operation and one for its result,
//! whatever the operation's number of statements; and the store's work runs
//! on this thread, beside the runtime's.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Tells an operation its batch's fate: `Ok` once committed.
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
/// An operation: given the connection inside its savepoint (or why there is none), how to finish it.
type Op = Box<dyn FnOnce(Result<&Connection, String>) -> Finish + Send>;

enum Job {
    Op(Op),
    /// Lets another connection write: commits what is open, says so, and waits until told to go on.
    Pause {
        paused: oneshot::Sender<()>,
        resume: mpsc::Receiver<()>,
    },
}

/// At most this many operations share one commit.
const BATCH: usize = 512;

pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// While held, the writer thread leaves the database to other connections.
pub struct Paused {
    _resume: mpsc::Sender<()>,
}

impl Writer {
    /// Opens the database file (already created and migrated) for writing, on a thread of its own.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed batch survives a power cut, which is what acking relies on.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // 1 MiB of pages: the hot path's tables and indexes stay cached, and the worker's memory bounded.
        conn.pragma_update(None, "cache_size", -1024)?;
        // Each operation's savepoint copies a page that existed when it began before first
        // changing it, so the operation can be undone alone; in memory each copy is a memcpy,
        // in a temporary file a write.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(&conn, &queue))
            .map_err(|e| StoreError::file("starting the SQLite writer thread".into(), e))?;
        Ok(Self { jobs })
    }

    /// Runs `op` in its own savepoint of the next batch: a failed operation
    /// leaves the others alone. Its result, once the batch is durable.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        let job: Op = Box::new(move |conn| {
            let outcome = conn.map_err(StoreError::Batch).and_then(|conn| in_savepoint(conn, op));
            Box::new(move |committed| {
                let _ = reply.send(match (outcome, committed) {
                    (Err(e), _) => Err(e),
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(StoreError::Batch(e)),
                });
            })
        });
        self.jobs.send(Job::Op(job)).map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Waits until the writer has committed what it has open and left the
    /// database to another connection (writes off the hot path, through
    /// sqlx), until the guard is dropped.
    pub async fn pause(&self) -> Result<Paused, StoreError> {
        let (paused, said) = oneshot::channel();
        let (resume, wait) = mpsc::channel();
        self.jobs
            .send(Job::Pause { paused, resume: wait })
            .map_err(|_| stopped())?;
        said.await.map_err(|_| stopped())?;
        Ok(Paused { _resume: resume })
    }
}

fn stopped() -> StoreError {
    StoreError::Batch("the SQLite writer has stopped".into())
}

fn in_savepoint<T>(conn: &Connection, op: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match op(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            undo(conn);
            Err(e)
        }
    }
}

/// Rolls the operation in progress back to its savepoint. If even this
/// fails, the batch's commit fails and every operation in it is told.
fn undo(conn: &Connection) {
    let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
}

/// The thread: batches whatever has queued up, commits it, tells each operation.
fn serve(conn: &Connection, queue: &mpsc::Receiver<Job>) {
    let mut batch: Vec<Finish> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Op(op) => {
                    let open = if batch.is_empty() {
                        conn.execute_batch("BEGIN IMMEDIATE")
                            .map_err(|e| format!("starting a batch: {e}"))
                    } else {
                        Ok(())
                    };
                    let failed = open.is_err();
                    // A panic fails its own operation (its caller sees the writer's answer go
                    // missing, and retries) and leaves the thread, and the rest of the batch, going.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(open.map(|()| conn)))) {
                        Ok(finish) if failed => finish(Ok(())),
                        Ok(finish) => batch.push(finish),
                        Err(_) => {
                            tracing::error!("a store operation panicked; it is undone and its event retried");
                            undo(conn);
                            if batch.is_empty() && !conn.is_autocommit() {
                                let _ = conn.execute_batch("ROLLBACK");
                            }
                        }
                    }
                }
                Job::Pause { paused, resume } => {
                    commit(conn, &mut batch);
                    if paused.send(()).is_ok() {
                        // Returns once the other writer is done (its guard dropped).
                        let _ = resume.recv();
                    }
                }
            }
            if batch.len() < BATCH {
                next = queue.try_recv().ok();
            }
        }
        commit(conn, &mut batch);
    }
}

/// Commits the open batch, if any, and tells its operations how it went.
fn commit(conn: &Connection, batch: &mut Vec<Finish>) {
    if batch.is_empty() {
        return;
    }
    let result = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in batch.drain(..) {
        finish(result.clone());
    }
}

/// Read-only connections for the point reads of every event (the state its
/// rules look at), run on the asking thread: an indexed look-up in WAL mode
/// takes microseconds and never waits for the writer, less than a hand-off
/// to another thread and back costs.
pub struct PointReads {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
}

/// Idle read connections kept open: about one per runtime thread, since a
/// read runs where it is asked for.
const IDLE_READERS: usize = 2;

impl PointReads {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: std::sync::Mutex::default(),
        }
    }

    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )?;
                // Readers wait only in rare moments (a WAL being reset); this thread is not held long for one.
                conn.busy_timeout(Duration::from_millis(250))?;
                // Point reads touch a few pages: a small cache keeps the worker's memory bounded.
                conn.pragma_update(None, "cache_size", -256)?;
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &tempfile::TempDir) -> (Writer, std::path::PathBuf) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .unwrap();
        (Writer::open(&path, Duration::from_secs(5)).unwrap(), path)
    }

    fn rows(path: &Path) -> Vec<(String, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut select = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
        select
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_operation_is_undone_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(&dir);
        let insert = |k: &'static str, v: i64| {
            move |conn: &Connection| {
                conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, v))?;
                Ok(())
            }
        };
        // The second inserts a row, then breaks a constraint: its first row must go too.
        let (a, b, c) = tokio::join!(
            writer.run(insert("a", 1)),
            writer.run(|conn: &Connection| {
                conn.execute("INSERT INTO t (k, v) VALUES ('b', 2)", [])?;
                conn.execute("INSERT INTO t (k, v) VALUES ('a', 3)", [])?;
                Ok(())
            }),
            writer.run(insert("c", 4)),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        let e = b.unwrap_err().to_string();
        assert!(e.contains("UNIQUE constraint failed: t.k"), "{e}");
        assert_eq!(rows(&path), vec![("a".into(), 1), ("c".into(), 4)]);
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(&dir);
        let panicked = writer
            .run(|conn: &Connection| -> Result<(), StoreError> {
                conn.execute("INSERT INTO t VALUES ('a', 1)", [])?;
                panic!("a bug in an operation");
            })
            .await;
        assert!(panicked.is_err());
        writer
            .run(|conn: &Connection| Ok(conn.execute("INSERT INTO t VALUES ('b', 2)", [])?))
            .await
            .unwrap();
        assert_eq!(rows(&path), vec![("b".into(), 2)]);
    }

    #[tokio::test]
    async fn while_paused_another_connection_writes_and_then_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(&dir);
        writer
            .run(|conn: &Connection| Ok(conn.execute("INSERT INTO t VALUES ('a', 1)", [])?))
            .await
            .unwrap();
        let paused = writer.pause().await.unwrap();
        let other = Connection::open(&path).unwrap();
        // No wait for the lock: the writer holds none while paused.
        other.busy_timeout(Duration::ZERO).unwrap();
        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('b', 2); COMMIT")
            .unwrap();
        let queued = writer.run(|conn: &Connection| Ok(conn.execute("INSERT INTO t VALUES ('c', 3)", [])?));
        drop(paused);
        queued.await.unwrap();
        assert_eq!(rows(&path), vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);
    }
}
