//! The database's layout and the named migrations between layouts, run at start.
//!
//! The layout number is kept under `meta-1["layout"]`. A database without it was written before
//! layouts were recorded, in layout 1. At open, every migration to a layout above the stored
//! one runs in order, in the write transaction that opens the database, and the new layout is
//! recorded with it: a crash leaves the database in the old layout or the new one, never
//! between. A database of a newer layout than this release knows is refused (a rollback past
//! a migration restores the backup taken before the upgrade; see the README's "Upgrading").
//!
//! A migration renames by writing new tables (table names carry their own version, `pins-1`,
//! `status-1`, ...) and deleting the old ones, so a reader never meets a table of the wrong
//! layout under a known name.

use redb::{ReadableTable, WriteTransaction};

use super::{META, StoreError};

/// The layout this release writes.
pub const LAYOUT: u64 = 1;
/// `meta-1` key of the layout number (u64 LE).
pub const META_LAYOUT: &str = "layout";

/// One step from layout `to - 1` to layout `to`.
pub struct Migration {
    pub name: &'static str,
    pub to: u64,
    pub run: fn(&WriteTransaction) -> Result<(), StoreError>,
}

/// This release's migrations, ascending by `to`, the last one to [`LAYOUT`]. None yet: layout 1
/// is the first recorded.
pub const MIGRATIONS: &[Migration] = &[];

/// Brings the database to `layout` with `migrations`. `fresh`: the database was just created
/// (it starts in the current layout). Returns the names of the migrations run.
pub fn migrate(
    txn: &WriteTransaction,
    fresh: bool,
    layout: u64,
    migrations: &[Migration],
) -> Result<Vec<&'static str>, StoreError> {
    let meta = txn.open_table(META)?;
    let stored = match meta.get(META_LAYOUT)? {
        Some(v) => super::read_u64(v.value()).ok_or(StoreError::Layout {
            found: None,
            known: layout,
        })?,
        None if fresh => layout,
        None => 1,
    };
    if stored > layout {
        return Err(StoreError::Layout {
            found: Some(stored),
            known: layout,
        });
    }
    drop(meta);
    let mut ran = Vec::new();
    for step in migrations
        .iter()
        .filter(|m| m.to > stored && m.to <= layout)
    {
        (step.run)(txn)?;
        ran.push(step.name);
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(META_LAYOUT, layout.to_le_bytes().as_slice())?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;

    use super::*;

    const OLD: TableDefinition<&str, u64> = TableDefinition::new("counts-1");
    const NEW: TableDefinition<&str, u64> = TableDefinition::new("counts-2");

    /// Doubles every count into a new table and drops the old one.
    fn double(txn: &WriteTransaction) -> Result<(), StoreError> {
        let old = txn.open_table(OLD)?;
        let mut new = txn.open_table(NEW)?;
        for item in old.iter()? {
            let (k, v) = item?;
            new.insert(k.value(), v.value() * 2)?;
        }
        drop(old);
        txn.delete_table(OLD)?;
        Ok(())
    }

    fn layout_of(db: &redb::Database) -> u64 {
        use redb::ReadableDatabase;
        let txn = db.begin_read().expect("test setup");
        let meta = txn.open_table(META).expect("test setup");
        let v = meta
            .get(META_LAYOUT)
            .expect("test setup")
            .expect("test setup");
        super::super::read_u64(v.value()).expect("test setup")
    }

    #[test]
    fn migrations_run_once_in_order_and_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().expect("test setup");
        let db = redb::Database::create(dir.path().join("db")).expect("test setup");
        // A database of layout 1, written before layouts were recorded.
        let txn = db.begin_write().expect("test setup");
        txn.open_table(META).expect("test setup");
        txn.open_table(OLD)
            .expect("test setup")
            .insert("a", 21)
            .expect("test setup");
        txn.commit().expect("test setup");

        let steps = [Migration {
            name: "double the counts",
            to: 2,
            run: double,
        }];
        let txn = db.begin_write().expect("test setup");
        assert_eq!(
            migrate(&txn, false, 2, &steps).expect("test setup"),
            ["double the counts"]
        );
        txn.commit().expect("test setup");
        assert_eq!(layout_of(&db), 2);
        {
            use redb::ReadableDatabase;
            let txn = db.begin_read().expect("test setup");
            assert_eq!(
                txn.open_table(NEW)
                    .expect("test setup")
                    .get("a")
                    .expect("test setup")
                    .expect("test setup")
                    .value(),
                42
            );
            assert!(txn.open_table(OLD).is_err(), "the old table is gone");
        }
        // Run again: nothing to do.
        let txn = db.begin_write().expect("test setup");
        assert!(
            migrate(&txn, false, 2, &steps)
                .expect("test setup")
                .is_empty()
        );
        txn.commit().expect("test setup");

        // A release that knows only layout 1 refuses it, and changes nothing.
        let txn = db.begin_write().expect("test setup");
        let err = migrate(&txn, false, 1, &[]).expect_err("a newer layout is refused");
        assert!(
            err.to_string().contains("layout 2"),
            "one clear line: {err}"
        );
        txn.abort().expect("test setup");
        assert_eq!(layout_of(&db), 2);
    }

    #[test]
    fn a_new_database_starts_in_the_current_layout() {
        let dir = tempfile::tempdir().expect("test setup");
        let db = redb::Database::create(dir.path().join("db")).expect("test setup");
        let txn = db.begin_write().expect("test setup");
        let steps = [Migration {
            name: "never for a new database",
            to: 2,
            run: |_| panic!("ran on a new database"),
        }];
        assert!(
            migrate(&txn, true, 2, &steps)
                .expect("test setup")
                .is_empty()
        );
        txn.commit().expect("test setup");
        assert_eq!(layout_of(&db), 2);
    }
}
