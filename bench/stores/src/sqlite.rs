//! SQLite (bundled): WAL journal, `synchronous=FULL` so a commit is durable when it returns
//! (with `NORMAL` a WAL commit can be lost to a power cut), one transaction per group.

use crate::glue::{decode, Backend, Op, Recovered};
use rusqlite::{params, Connection};
use std::path::Path;

/// The writer's connection.
pub struct Sqlite(Connection);

/// Opens (or creates) the database in `dir`.
pub fn open(dir: &Path) -> Result<Connection, String> {
    let conn = Connection::open(dir.join("spool.db")).map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS spool (key INTEGER PRIMARY KEY, rec BLOB NOT NULL)")
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Opens the store for writing: the backend and the next key.
pub fn writer(dir: &Path) -> Result<(Sqlite, u64), String> {
    let conn = open(dir)?;
    let last: Option<i64> = conn
        .query_row("SELECT max(key) FROM spool", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok((Sqlite(conn), last.map_or(0, |k| k as u64 + 1)))
}

impl Backend for Sqlite {
    fn commit(&mut self, ops: &[Op]) -> Result<(), String> {
        let tx = self.0.transaction().map_err(|e| e.to_string())?;
        {
            let mut put = tx
                .prepare_cached("INSERT INTO spool (key, rec) VALUES (?1, ?2)")
                .map_err(|e| e.to_string())?;
            let mut del = tx
                .prepare_cached("DELETE FROM spool WHERE key = ?1")
                .map_err(|e| e.to_string())?;
            for op in ops {
                match op {
                    Op::Put(k, v) => put.execute(params![*k as i64, v]),
                    Op::Del(k) => del.execute(params![*k as i64]),
                }
                .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// Reads every live record in key order (and hands back the open store, to close untimed).
pub fn recover(dir: &Path) -> Result<Recovered, String> {
    let conn = open(dir)?;
    let mut out = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT key, rec FROM spool ORDER BY key")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let key: i64 = row.get(0).map_err(|e| e.to_string())?;
            let blob = row
                .get_ref(1)
                .map_err(|e| e.to_string())?
                .as_blob()
                .map_err(|e| e.to_string())?;
            out.push((key as u64, decode(blob)?));
        }
    }
    Ok((out, Box::new(conn)))
}
