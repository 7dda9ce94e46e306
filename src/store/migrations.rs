//! The schema migrations of both engines, embedded at build time by `build.rs` from
//! `migrations/sqlite` and `migrations/postgres`, as sqlx migrators. Checksums are sqlx's own
//! (SHA-384 of the SQL), so a data dir or database migrated by any earlier build of Concierge
//! validates against these.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};

type Embedded = &'static [(i64, &'static str, &'static str)];

const SQLITE_FILES: Embedded = include!(concat!(env!("OUT_DIR"), "/migrations_sqlite.rs"));
const POSTGRES_FILES: Embedded = include!(concat!(env!("OUT_DIR"), "/migrations_postgres.rs"));

pub(super) static SQLITE: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE_FILES));
pub(super) static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| migrator(POSTGRES_FILES));

fn migrator(files: Embedded) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_carry_every_migration_in_order() {
        for files in [SQLITE_FILES, POSTGRES_FILES] {
            let versions: Vec<i64> = files.iter().map(|(v, ..)| *v).collect();
            let expected: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(
                versions, expected,
                "migrations are numbered 1, 2, 3, … without gaps"
            );
        }
        assert_eq!(SQLITE.iter().count(), POSTGRES.iter().count());
        let first = SQLITE.iter().next().expect("a first migration");
        assert_eq!(first.description, "foundation");
    }
}
