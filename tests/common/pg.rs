//! A database of its own for each Postgres test on the local server (`M365_TEST_PG_URL`,
//! default postgres@127.0.0.1:5432), so tests run in parallel; shared by the test binaries.

// Each test binary that includes this file uses a part of it.
#![allow(dead_code)]

use sqlx::Connection;

pub fn pg_base() -> String {
    std::env::var("M365_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Runs `sql` on the server's `postgres` database.
pub async fn admin(sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .expect("the test Postgres answers (is it running? .ci/run starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let name = format!("m365_test_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}")).await;
        PgDb {
            url: format!("{}/{name}", pg_base()),
            name,
        }
    }

    /// Cuts every connection to the database and keeps new ones out until `let_in`.
    pub async fn shut_out(&self) {
        admin(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
            self.name
        ))
        .await;
    }

    pub async fn let_in(&self) {
        admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }

    pub async fn drop_db(self) {
        admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}
