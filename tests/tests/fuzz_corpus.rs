//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the core's fuzz entry
//! points under plain `cargo test`, so a seed that once found a bug keeps guarding against it.
//! It lives here, in the unpublished workspace test crate, because the corpora are outside the
//! core crate's package.

use std::path::PathBuf;

use usageflow_socket_core::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("read corpus file");
            (p, data)
        })
        .collect()
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "fuzz/corpus/{target}/{} fails", path.display());
    }
}

#[test]
fn replay_frame_decode_corpus() {
    replay("frame_decode", fuzzing::frame_decode);
}

#[test]
fn replay_pool_ops_corpus() {
    replay("pool_ops", fuzzing::pool_ops);
}

#[test]
fn replay_config_corpus() {
    replay("config", fuzzing::config);
}

/// `cargo test -p usageflow-socket-tests --test fuzz_corpus show_pool_ops_corpus -- --ignored --nocapture`
#[test]
#[ignore = "prints what each pool_ops seed exercises"]
fn show_pool_ops_corpus() {
    for (path, data) in corpus("pool_ops") {
        println!("{}: {:?}", path.display(), fuzzing::run_pool_ops(&data));
    }
}
