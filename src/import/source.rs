//! Reading acme-dns's `records` table from either of its database engines. Table and
//! column names are written unquoted: SQLite compares them without regard to case, and
//! PostgreSQL folds them to the lower case acme-dns's unquoted `CREATE TABLE` made.

use std::{path::PathBuf, time::Duration};

use super::record::Row;

/// Where acme-dns keeps its accounts.
#[derive(Clone, Debug)]
pub enum Source {
    /// The SQLite file (acme-dns's `[database] connection` with `engine = "sqlite3"`).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string, `host=… user=… dbname=…` or a `postgres://` URL.
    Postgres(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{0}: no such file; pass the path acme-dns's config names under [database] connection \
         (for example /var/lib/acme-dns/acme-dns.db)"
    )]
    Missing(PathBuf),
    #[error(
        "cannot read {path} as an SQLite database: {reason}; check that it is the file \
         acme-dns's config names under [database] connection"
    )]
    Sqlite { path: PathBuf, reason: String },
    #[error(
        "{0} is not an acme-dns database: it has no `records` table with the columns Username, \
         Password and Subdomain; check that this is the file acme-dns's config names"
    )]
    NotAcmeDns(String),
    #[error(
        "not a PostgreSQL connection string ({0}); write it as 'host=db.example.org user=acmedns \
         dbname=acmedns' or postgres://acmedns@db.example.org/acmedns"
    )]
    BadConnectionString(String),
    #[error(
        "cannot use sslmode=require: this command connects without TLS. Reach the database \
         over a path you trust (kubectl port-forward, an SSH tunnel, its Unix socket) with \
         sslmode=disable"
    )]
    TlsRequired,
    #[error(
        "cannot connect to PostgreSQL at {target}: {reason}; check that the server runs, \
         listens there and accepts this user from this host"
    )]
    Connect { target: String, reason: String },
    #[error("reading acme-dns's records from PostgreSQL at {target} failed: {reason}")]
    Query { target: String, reason: String },
}

impl Source {
    /// The database, for messages (never the password).
    pub fn describe(&self) -> String {
        match self {
            Source::Sqlite(path) => path.display().to_string(),
            Source::Postgres(text) => match text.parse::<tokio_postgres::Config>() {
                Ok(config) => postgres_target(&config),
                Err(_) => "PostgreSQL".to_string(),
            },
        }
    }

    /// Every row of `records`, ordered by subdomain so runs report in the same order.
    pub async fn rows(&self) -> Result<Vec<Row>, SourceError> {
        match self {
            Source::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || sqlite_rows(&path))
                    .await
                    .expect("reading the SQLite file does not panic")
            }
            Source::Postgres(text) => postgres_rows(text).await,
        }
    }
}

fn sqlite_rows(path: &std::path::Path) -> Result<Vec<Row>, SourceError> {
    use rusqlite::{OpenFlags, types::ValueRef};
    if !path.exists() {
        return Err(SourceError::Missing(path.to_path_buf()));
    }
    let fail = |e: rusqlite::Error| SourceError::Sqlite {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Read-only: the import never writes to acme-dns's database, which may still be in use.
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    // acme-dns may be writing while we read; wait for its lock rather than fail.
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(fail)?;
    let columns: Vec<String> = connection
        .prepare("SELECT lower(name) FROM pragma_table_info('records')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(fail)?;
    let query =
        select(&columns, "").ok_or_else(|| SourceError::NotAcmeDns(path.display().to_string()))?;
    let mut statement = connection.prepare(&query).map_err(fail)?;
    let bytes = |value: ValueRef<'_>| match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string().into_bytes()),
        ValueRef::Real(f) => Some(f.to_string().into_bytes()),
        // acme-dns binds the hash as bytes, so SQLite holds it as a BLOB.
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b.to_vec()),
    };
    let rows = statement
        .query_map([], |r| {
            Ok(Row {
                username: bytes(r.get_ref(0)?),
                password: bytes(r.get_ref(1)?),
                subdomain: bytes(r.get_ref(2)?),
                allow_from: bytes(r.get_ref(3)?),
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(fail)?;
    Ok(rows)
}

/// The query for a `records` table with these (lowercase) columns, each read with
/// `cast` appended, `None` when it is not acme-dns's table. AllowFrom came later than the
/// others; without it, no account was restricted.
fn select(columns: &[String], cast: &str) -> Option<String> {
    let has = |c: &str| columns.iter().any(|k| k == c);
    if !(has("username") && has("password") && has("subdomain")) {
        return None;
    }
    let allow_from = if has("allowfrom") {
        "allowfrom"
    } else {
        "NULL"
    };
    Some(format!(
        "SELECT username{cast}, password{cast}, subdomain{cast}, {allow_from}{cast} \
         FROM records ORDER BY subdomain"
    ))
}

fn postgres_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    format!(
        "{}/{}",
        if hosts.is_empty() {
            "localhost:5432".to_string()
        } else {
            hosts.join(",")
        },
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

async fn postgres_rows(text: &str) -> Result<Vec<Row>, SourceError> {
    let mut config: tokio_postgres::Config = text
        .parse()
        .map_err(|e: tokio_postgres::Error| SourceError::BadConnectionString(e.to_string()))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(SourceError::TlsRequired);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let target = postgres_target(&config);
    let (client, connection) =
        config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| SourceError::Connect {
                target: target.clone(),
                reason: error_text(&e),
            })?;
    let driver = tokio::spawn(connection);
    let query_failed = |e: tokio_postgres::Error| SourceError::Query {
        target: target.clone(),
        reason: error_text(&e),
    };
    // The `records` table that an unqualified name reaches, as acme-dns's own queries do.
    let columns: Vec<String> = client
        .query(
            "SELECT lower(a.attname) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass('records') AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await
        .map_err(query_failed)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    // Every column as text, so a column of another type is read rather than refused.
    let query =
        select(&columns, "::text").ok_or_else(|| SourceError::NotAcmeDns(target.clone()))?;
    let rows = client
        .query(&query, &[])
        .await
        .map_err(query_failed)?
        .iter()
        .map(|r| {
            let column = |i: usize| r.get::<_, Option<String>>(i).map(String::into_bytes);
            Row {
                username: column(0),
                password: column(1),
                subdomain: column(2),
                allow_from: column(3),
            }
        })
        .collect();
    drop(client);
    let _ = driver.await;
    Ok(rows)
}

/// The error with its cause: tokio-postgres's own text is often only "error connecting
/// to server" or "db error".
fn error_text(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = error.as_db_error() {
        return db.message().to_string();
    }
    match error.source() {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_records_table_without_allowfrom_is_read_as_unrestricted() {
        let query = select(&columns(&["username", "password", "subdomain"]), "").unwrap();
        assert!(query.contains(", NULL FROM records"), "{query}");
    }

    #[test]
    fn a_table_without_acme_dns_columns_is_not_acme_dns() {
        assert_eq!(select(&[], ""), None);
        assert_eq!(select(&columns(&["username", "subdomain"]), ""), None);
    }

    #[tokio::test]
    async fn sslmode_require_and_malformed_strings_are_refused_before_connecting() {
        let tls = Source::Postgres("host=db.invalid sslmode=require".into());
        assert!(matches!(tls.rows().await, Err(SourceError::TlsRequired)));
        let bad = Source::Postgres("host=db.invalid port=eighty".into());
        let error = bad.rows().await.unwrap_err();
        assert!(
            matches!(error, SourceError::BadConnectionString(_)),
            "{error}"
        );
        assert!(error.to_string().contains("postgres://"), "{error}");
    }

    #[test]
    fn the_target_in_messages_never_carries_the_password() {
        let source = Source::Postgres(
            "host=db.example.org port=5433 user=acmedns password=hunter2 dbname=acme".into(),
        );
        assert_eq!(source.describe(), "db.example.org:5433/acme");
        let url = Source::Postgres("postgres://acmedns:hunter2@db.example.org/acme".into());
        assert_eq!(url.describe(), "db.example.org:5432/acme");
    }
}
