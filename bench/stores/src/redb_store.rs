//! redb: one write transaction per group with `Durability::Immediate` (durable on commit).

use crate::glue::{decode, Backend, Op, Recovered};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

/// The writer's database.
pub struct Redb(Database);

/// Opens the store for writing: the backend and the next key.
pub fn writer(dir: &Path) -> Result<(Redb, u64), String> {
    let db = Database::create(dir.join("spool.redb")).map_err(|e| e.to_string())?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    let next = {
        let table = tx.open_table(SPOOL).map_err(|e| e.to_string())?;
        let last = table.last().map_err(|e| e.to_string())?;
        last.map_or(0, |(k, _)| k.value() + 1)
    };
    tx.commit().map_err(|e| e.to_string())?;
    Ok((Redb(db), next))
}

impl Backend for Redb {
    fn commit(&mut self, ops: &[Op]) -> Result<(), String> {
        let mut tx = self.0.begin_write().map_err(|e| e.to_string())?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(SPOOL).map_err(|e| e.to_string())?;
            for op in ops {
                match op {
                    Op::Put(k, v) => table.insert(*k, v.as_slice()).map(drop),
                    Op::Del(k) => table.remove(*k).map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// Reads every live record in key order (and hands back the open store, to close untimed).
pub fn recover(dir: &Path) -> Result<Recovered, String> {
    let db = Database::create(dir.join("spool.redb")).map_err(|e| e.to_string())?;
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let table = tx.open_table(SPOOL).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        out.push((k.value(), decode(v.value())?));
    }
    drop(table);
    drop(tx);
    Ok((out, Box::new(db)))
}
