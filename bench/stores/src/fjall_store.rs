//! fjall: one keyspace (keys as big-endian u64, so byte order is key order), a write batch
//! per group, then `persist(SyncData)` (the journal is fdatasync'ed).

use crate::glue::{decode, Backend, Op, Recovered};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

/// The writer's database and keyspace.
pub struct Fjall(Database, Keyspace);

fn open(dir: &Path) -> Result<(Database, Keyspace), String> {
    let db = Database::builder(dir).open().map_err(|e| e.to_string())?;
    let ks = db
        .keyspace("spool", KeyspaceCreateOptions::default)
        .map_err(|e| e.to_string())?;
    Ok((db, ks))
}

/// Opens the store for writing: the backend and the next key.
pub fn writer(dir: &Path) -> Result<(Fjall, u64), String> {
    let (db, ks) = open(dir)?;
    let next = match ks.last_key_value() {
        Some(kv) => key_of(&kv.key().map_err(|e| e.to_string())?)? + 1,
        None => 0,
    };
    Ok((Fjall(db, ks), next))
}

fn key_of(bytes: &[u8]) -> Result<u64, String> {
    Ok(u64::from_be_bytes(
        bytes.try_into().map_err(|_| "bad key length".to_string())?,
    ))
}

impl Backend for Fjall {
    fn commit(&mut self, ops: &[Op]) -> Result<(), String> {
        let mut batch = self.0.batch();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(&self.1, k.to_be_bytes(), v.as_slice()),
                Op::Del(k) => batch.remove(&self.1, k.to_be_bytes()),
            }
        }
        batch.commit().map_err(|e| e.to_string())?;
        self.0.persist(PersistMode::SyncData).map_err(|e| e.to_string())
    }
}

/// Reads every live record in key order (and hands back the open store, to close untimed).
pub fn recover(dir: &Path) -> Result<Recovered, String> {
    let (db, ks) = open(dir)?;
    let mut out = Vec::new();
    for kv in ks.iter() {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        out.push((key_of(&k)?, decode(&v)?));
    }
    Ok((out, Box::new((db, ks))))
}
