//! Unit tests of the spool's store: round trips, recovery, bounds, locks, damage.

use super::*;
use std::time::Duration;

pub(crate) fn record(i: u64) -> SpoolRecord {
    SpoolRecord {
        message_id: i,
        kind: if i % 3 == 0 {
            "use_allocation".into()
        } else {
            "report_call_chain".into()
        },
        frame: format!(r#"{{"type":"use_allocation","id":"{i}","payload":{{"allocationId":"a-{i}"}}}}"#),
        at_least_once: i % 2 == 0,
        first_sent_unix_ms: 1_700_000_000_000 + i,
        rewrites: (i % 4) as u32,
    }
}

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ufsock-spool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn appended_records_survive_a_reopen_in_order_and_released_ones_do_not() {
    let dir = tmp_dir("roundtrip");
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert!(recovery.records.is_empty());
    let keys: Vec<_> = (0..100).map(|i| spool.append(&record(i)).unwrap().key).collect();
    for key in keys.iter().step_by(2) {
        assert!(spool.release(*key));
    }
    assert!(!spool.release(keys[0]), "a second release is a no-op");
    spool.close_blocking().unwrap();
    let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let got: Vec<_> = recovery.records.iter().map(|r| r.record.clone()).collect();
    let want: Vec<_> = (0..100).filter(|i| i % 2 == 1).map(record).collect();
    assert_eq!(got, want);
    assert!(recovery.damage.is_clean());
    let next = spool.append(&record(1000)).unwrap().key;
    assert!(
        next > *keys.last().unwrap(),
        "keys keep increasing across processes"
    );
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}

fn deadline(after: Duration) -> impl std::future::Future<Output = ()> {
    let timer = smol::Timer::after(after);
    async move {
        timer.await;
    }
}

#[test]
fn a_failing_disk_is_a_typed_error_and_keeps_what_was_durable() {
    let dir = tmp_dir("diskfull");
    let (spool, _) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    let first = spool.append(&record(1)).unwrap();
    assert_eq!(
        smol::block_on(spool.wait_durable(first.mark, deadline(Duration::from_secs(5)))),
        Ok(true)
    );
    spool.inject_write_error(std::io::ErrorKind::StorageFull);
    let second = spool.append(&record(2)).unwrap();
    let waited = smol::block_on(spool.wait_durable(second.mark, deadline(Duration::from_secs(5))));
    assert!(
        matches!(
            waited,
            Err(SpoolError::WriteFailed {
                kind: std::io::ErrorKind::StorageFull,
                ..
            })
        ),
        "{waited:?}"
    );
    assert!(matches!(
        spool.append(&record(3)),
        Err(SpoolError::WriteFailed { .. })
    ));
    assert!(matches!(
        spool.close_blocking(),
        Err(SpoolError::WriteFailed { .. })
    ));
    let (_spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
    assert_eq!(recovery.records.len(), 1, "the durable record survives");
    assert_eq!(recovery.records[0].record, record(1));
    drop(_spool);
    let _ = std::fs::remove_dir_all(&dir);
}
