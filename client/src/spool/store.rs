//! The spool directory: its lock, its segment files, recovery on open and a read-only
//! inspection.

use super::format::{self, Damage, SegmentEntry, HEADER_LEN};
use super::writer::{Recovered, SegAcct, State};
use super::{RecoveredRecord, Recovery, Spool, SpoolError, SpoolKey, SpoolOptions, SpoolRecord};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "spool.lock";
const SEGMENT_SUFFIX: &str = ".seg";

/// The path of segment `seq` in `dir` (16 hex digits, so names sort as numbers do).
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
}

/// Makes the directory's entries (created and deleted files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The segment files in `dir`, by sequence number (other files are ignored).
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SpoolError::io("listing", dir, &e))?;
    let mut seqs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("listing", dir, &e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// What the segments on disk hold.
struct Loaded {
    /// Live records: key -> (segment holding its latest copy, record).
    live: BTreeMap<u64, (u64, SpoolRecord)>,
    /// Every segment's size.
    segments: Vec<(u64, u64)>,
    /// The first key no earlier process handed out.
    next_key: u64,
    damage: Damage,
    bytes_read: u64,
}

/// Reads every segment of `dir` in order, applying appends and releases.
fn load(dir: &Path) -> Result<Loaded, SpoolError> {
    let mut loaded = Loaded {
        live: BTreeMap::new(),
        segments: Vec::new(),
        next_key: 0,
        damage: Damage::default(),
        bytes_read: 0,
    };
    for seq in list_segments(dir)? {
        let path = segment_path(dir, seq);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Deleted between the listing and the read (by a writer we are only inspecting).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpoolError::io("reading", &path, &e)),
        };
        let scan = format::scan_segment(&bytes).map_err(|v| SpoolError::IncompatibleVersion {
            path: path.clone(),
            found: v.found,
            supported: format::FORMAT_VERSION,
        })?;
        if let Some(base) = scan.base_key {
            loaded.next_key = loaded.next_key.max(base);
        }
        for entry in scan.entries {
            match entry {
                SegmentEntry::Append(key, record) => {
                    loaded.next_key = loaded.next_key.max(key.0.saturating_add(1));
                    loaded.live.insert(key.0, (seq, record));
                }
                SegmentEntry::Release(key) => {
                    loaded.next_key = loaded.next_key.max(key.0.saturating_add(1));
                    loaded.live.remove(&key.0);
                }
            }
        }
        loaded.damage.add(&scan.damage);
        loaded.bytes_read += bytes.len() as u64;
        loaded.segments.push((seq, bytes.len() as u64));
    }
    Ok(loaded)
}

/// Creates `dir` if needed and takes its lock.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    std::fs::create_dir_all(dir).map_err(|e| SpoolError::io("creating the directory", dir, &e))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| SpoolError::io("creating the lock file", &path, &e))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs4::TryLockError::Error(e)) => Err(SpoolError::io("locking", &path, &e)),
    }
}

pub(crate) fn open(options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
    let dir = options.dir.as_path();
    let lock_file = lock(dir)?;
    let loaded = load(dir)?;
    // Always a fresh segment: never append after a torn tail of an earlier process.
    let active_seg = loaded.segments.last().map_or(0, |(seq, _)| seq + 1);
    let active = create_segment(dir, active_seg, loaded.next_key)?;

    let mut segs: BTreeMap<u64, SegAcct> = loaded
        .segments
        .iter()
        .map(|&(seq, bytes)| {
            (
                seq,
                SegAcct {
                    live_records: 0,
                    bytes,
                },
            )
        })
        .collect();
    segs.insert(
        active_seg,
        SegAcct {
            live_records: 0,
            bytes: HEADER_LEN as u64,
        },
    );
    let mut live = Vec::with_capacity(loaded.live.len());
    let mut records = Vec::with_capacity(loaded.live.len());
    for (key, (seg, record)) in loaded.live {
        if let Some(acct) = segs.get_mut(&seg) {
            acct.live_records += 1;
        }
        live.push((
            key,
            seg,
            format::append_len(&record) as u32,
            record.first_sent_unix_ms,
        ));
        records.push(RecoveredRecord {
            key: SpoolKey(key),
            record,
        });
    }
    let state = State::recovered(
        &options,
        Recovered {
            next_key: loaded.next_key,
            live,
            segs,
            active_seg,
            active,
        },
    );
    let spool = Spool::start(&options, state, lock_file)?;
    let recovery = Recovery {
        records,
        damage: loaded.damage,
        segments_read: loaded.segments.len() as u64,
        bytes_read: loaded.bytes_read,
    };
    if !recovery.damage.is_clean() {
        tracing::warn!(dir = %dir.display(), damage = ?recovery.damage, "spool: damaged records skipped");
    }
    Ok((spool, recovery))
}

/// Creates segment `seq` with its header, durably (file and directory entry).
fn create_segment(dir: &Path, seq: u64, base_key: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| SpoolError::io("creating", &path, &e))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    format::encode_header(&mut header, base_key);
    file.write_all(&header)
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir))
        .map_err(|e| SpoolError::io("writing", &path, &e))?;
    Ok(file)
}

/// Counts for one message type in an [`Inspection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindSummary {
    /// Live records of this type.
    pub records: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Never sent (`first_sent_unix_ms` is 0).
    pub unsent: u64,
    /// Sent once, awaiting confirmation.
    pub sent: u64,
    /// Sent more than once (rewritten).
    pub resent: u64,
    /// Asked for at-least-once delivery.
    pub at_least_once: u64,
    /// The earliest first send among the sent ones.
    pub oldest_first_sent_unix_ms: Option<u64>,
}

/// What a spool directory holds, read without taking its lock and without changing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// Segment files.
    pub segments: u64,
    /// Their bytes.
    pub disk_bytes: u64,
    /// Live records (appended, not released).
    pub records: u64,
    /// Their encoded bytes.
    pub live_bytes: u64,
    /// The earliest first send among the live records.
    pub oldest_first_sent_unix_ms: Option<u64>,
    /// Per message type.
    pub by_kind: BTreeMap<String, KindSummary>,
    /// What the reader skipped.
    pub damage: Damage,
    /// Whether a process holds the spool's lock now (its files may change under the reader).
    pub in_use: bool,
}

/// Reads the spool in `dir` without taking its lock or changing anything: for
/// `ufsock spool inspect` and monitoring. Errors as [`Spool::open`], except `Locked`.
pub fn inspect(dir: &Path) -> Result<Inspection, SpoolError> {
    if !dir.is_dir() {
        let err = io::Error::new(io::ErrorKind::NotFound, "not a directory");
        return Err(SpoolError::io("inspecting", dir, &err));
    }
    let in_use = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => match fs4::FileExt::try_lock_shared(&file) {
            Ok(()) => {
                let _ = fs4::FileExt::unlock(&file);
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    };
    let loaded = load(dir)?;
    let mut out = Inspection {
        segments: loaded.segments.len() as u64,
        disk_bytes: loaded.bytes_read,
        records: loaded.live.len() as u64,
        damage: loaded.damage,
        in_use,
        ..Inspection::default()
    };
    for (_, record) in loaded.live.values() {
        let bytes = format::append_len(record) as u64;
        out.live_bytes += bytes;
        let kind = out.by_kind.entry(record.kind.clone()).or_default();
        kind.records += 1;
        kind.bytes += bytes;
        kind.at_least_once += u64::from(record.at_least_once);
        if record.first_sent_unix_ms == 0 {
            kind.unsent += 1;
        } else {
            if record.rewrites == 0 {
                kind.sent += 1;
            } else {
                kind.resent += 1;
            }
            let first = record.first_sent_unix_ms;
            kind.oldest_first_sent_unix_ms =
                Some(kind.oldest_first_sent_unix_ms.map_or(first, |o| o.min(first)));
            out.oldest_first_sent_unix_ms =
                Some(out.oldest_first_sent_unix_ms.map_or(first, |o| o.min(first)));
        }
    }
    Ok(out)
}
