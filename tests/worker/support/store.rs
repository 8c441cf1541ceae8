//! The store each test runs against, per backend: a fresh SQLite file, or a
//! fresh PostgreSQL database created for the test and dropped after it.
//! PostgreSQL tests never skip: without a server they fail saying how to start one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// The server's maintenance database, where test databases are created.
/// Override with `ROUTER_TEST_POSTGRES_URL`.
pub const DEFAULT_PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's store; shared (through `Arc`) by every worker of the test.
pub struct TestStore {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

fn admin_url() -> String {
    std::env::var("ROUTER_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN.to_string())
}

async fn admin() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}). The PostgreSQL half of the test matrix needs it: \
             start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             (or `docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`), \
             or point ROUTER_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE."
        )
    })
}

impl TestStore {
    pub async fn new(backend: Backend) -> Arc<Self> {
        Arc::new(match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Self {
                    url: format!("sqlite://{}", dir.path().join("router.db").display()),
                    _dir: Some(dir),
                    pg_database: None,
                }
            }
            Backend::Postgres => {
                let name = super::unique("db")
                    .replace(['-', '.'], "_")
                    .replace("test_", "router_test_");
                let mut conn = admin().await;
                // The name is ours: letters, digits and underscores only.
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
                let _ = conn.close().await;
                let admin = admin_url();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg_database: Some(name),
                }
            }
        })
    }

    /// Store settings as a worker would load them, for store-level tests.
    pub fn settings(&self, lease: Duration) -> referral_router::config::Store {
        referral_router::config::Store {
            url: referral_router::config::Secret::new(self.url.clone()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
            lease,
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some(name) = self.pg_database.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url()).await.ok()?;
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop a test database; remove router_test_* databases by hand");
        }
    }
}

/// Generates, for each named `async fn NAME(backend: Backend)`, the tests
/// `NAME::sqlite` and `NAME::postgres`: one test matrix, not two copies.
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            use crate::support::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(Backend::Postgres).await
            }
        }
    )+};
}
pub(crate) use on_both_backends;
