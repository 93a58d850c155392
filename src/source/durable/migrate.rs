//! The crate's versioned migrations, applied in one transaction that the dialect's
//! `migrate_begin` statement opens and locks (SQLite `BEGIN IMMEDIATE`; PostgreSQL an advisory
//! lock on the table's name), so processes starting together apply them once.

use std::collections::HashSet;

use sqlx::Pool;

use super::common::{self, Migration};
use super::dialect::{Arg, Store};
use super::error::DurableError;
use super::Sql;

/// What a migration does: its first line, `-- migration: <description>`.
fn description(text: &'static str) -> &'static str {
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("-- migration:").map_or(first, str::trim)
}

/// The migrations of `all` not yet `applied`, in order, as (version, description, SQL); an
/// error when the database holds a version newer than any in `all` (migrated by a newer
/// version of the crate).
fn pending<D: Store>(
    all: &[Migration],
    applied: &HashSet<i64>,
) -> Result<Vec<(i64, &'static str, &'static str)>, DurableError<D>> {
    let known = all.len() as i64;
    if let Some(found) = applied.iter().copied().filter(|v| *v > known).max() {
        return Err(DurableError::SchemaTooNew { found, known });
    }
    Ok((1..)
        .zip(all.iter().copied())
        .filter(|(version, _)| !applied.contains(version))
        .map(|(version, text)| (version, description(text), text))
        .collect())
}

/// Applies the migrations not yet applied; all or none.
pub(crate) async fn migrate<D: Store>(
    pool: &Pool<D::Db>,
    sql: &Sql,
    vars: &[(&str, &str)],
    table: &str,
) -> Result<(), DurableError<D>> {
    let mut tx = pool.begin_with(sql.migrate_begin.clone()).await?;
    D::raw(&mut *tx, &sql.migrate_lock).await?;
    D::raw(&mut *tx, &sql.migrations_table).await?;
    let applied: HashSet<i64> = D::ints(&mut *tx, &sql.migrations_applied, vec![])
        .await?
        .into_iter()
        .collect();
    for (version, description, text) in pending::<D>(D::MIGRATIONS, &applied)? {
        let wrap = |source| DurableError::<D>::Migration {
            version,
            description,
            source,
        };
        let text = common::fill(text, vars);
        D::raw(&mut *tx, &text).await.map_err(wrap)?;
        let args = vec![
            Arg::Int(version),
            Arg::Text(description.to_owned()),
            Arg::Now,
        ];
        D::count(&mut *tx, &sql.migration_record, args)
            .await
            .map_err(wrap)?;
        tracing::info!(table, version, description, "applied a migration");
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::source::sqlite::SqliteDialect;

    fn pending(
        all: &[Migration],
        applied: &HashSet<i64>,
    ) -> Result<Vec<i64>, DurableError<SqliteDialect>> {
        super::pending::<SqliteDialect>(all, applied).map(|p| p.iter().map(|m| m.0).collect())
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let all: &[Migration] = &["-- migration: a\n", "-- migration: b\n"];
        assert_eq!(description(all[1]), "b");
        let none = HashSet::new();
        assert_eq!(pending(all, &none).ok(), Some(vec![1, 2]));
        let one: HashSet<i64> = [1].into();
        assert_eq!(pending(all, &one).ok(), Some(vec![2]));
        let newer: HashSet<i64> = [1, 2, 3].into();
        assert!(matches!(
            pending(all, &newer),
            Err(DurableError::SchemaTooNew { found: 3, known: 2 })
        ));
    }
}
