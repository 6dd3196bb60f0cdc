//! The frames the server received, recorded for a test to assert on (as wiremock's
//! `received_requests` does for HTTP). Off by default: recording takes a lock and an
//! allocation per frame, which `ufsock serve` under a benchmark must not pay.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

/// One text frame the server received from a client, as recorded by
/// [`Counters::record_frames`](crate::Counters::record_frames).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedFrame {
    /// The frame's text, exactly as received.
    pub text: String,
    /// Its `type`, when it is a JSON object with a string `type`.
    pub kind: Option<String>,
    /// Its `id`, when it has a string one (requests have one; fire-and-forget messages none).
    pub id: Option<String>,
    /// Its `payload` (`Null` when absent or when the frame is not a JSON object).
    pub payload: Value,
    /// When the server read it.
    pub received_at: Instant,
}

impl ReceivedFrame {
    fn parse(text: &str, received_at: Instant) -> Self {
        let mut object = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => object,
            _ => serde_json::Map::new(),
        };
        let string = |value: Option<Value>| match value {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Self {
            text: text.to_owned(),
            kind: string(object.remove("type")),
            id: string(object.remove("id")),
            payload: object.remove("payload").unwrap_or(Value::Null),
            received_at,
        }
    }
}

/// The recorder inside [`Counters`](crate::Counters): at most `limit` frames, the rest only
/// counted.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// Whether frames are recorded (off: no lock on the hot path).
    on: AtomicBool,
    frames: Mutex<Frames>,
    /// Frames received while recording but beyond the limit.
    pub(crate) not_recorded: AtomicU64,
}

#[derive(Debug, Default)]
struct Frames {
    limit: usize,
    frames: Vec<ReceivedFrame>,
}

impl Recorder {
    /// Starts recording (again), keeping at most `limit` frames from now on; forgets what was
    /// recorded before.
    pub(crate) fn start(&self, limit: usize) {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        *frames = Frames {
            limit,
            frames: Vec::new(),
        };
        self.not_recorded.store(0, Relaxed);
        self.on.store(true, Relaxed);
    }

    /// Records `text` when recording is on.
    pub(crate) fn record(&self, text: &str) {
        if !self.on.load(Relaxed) {
            return;
        }
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.frames.len() < frames.limit {
            frames.frames.push(ReceivedFrame::parse(text, Instant::now()));
        } else {
            self.not_recorded.fetch_add(1, Relaxed);
        }
    }

    /// A copy of the recorded frames, in the order the server read them.
    pub(crate) fn frames(&self) -> Vec<ReceivedFrame> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frames
            .clone()
    }

    /// The recorded frames, leaving the record empty (recording goes on).
    pub(crate) fn take(&self) -> Vec<ReceivedFrame> {
        std::mem::take(&mut self.frames.lock().unwrap_or_else(|e| e.into_inner()).frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_id_and_payload_and_keeps_the_text() {
        let text = r#"{"type":"request_for_allocation","payload":{"alias":"a","amount":1.0},"id":"r-1"}"#;
        let frame = ReceivedFrame::parse(text, Instant::now());
        assert_eq!(frame.text, text);
        assert_eq!(frame.kind.as_deref(), Some("request_for_allocation"));
        assert_eq!(frame.id.as_deref(), Some("r-1"));
        assert_eq!(frame.payload["alias"], "a");
        let odd = ReceivedFrame::parse(r#"[1,2]"#, Instant::now());
        assert_eq!((odd.kind, odd.id, odd.payload), (None, None, Value::Null));
        let numeric_id = ReceivedFrame::parse(r#"{"type":"x","id":7}"#, Instant::now());
        assert_eq!(numeric_id.id, None);
    }

    #[test]
    fn records_only_when_on_and_at_most_the_limit() {
        let recorder = Recorder::default();
        recorder.record(r#"{"type":"before"}"#);
        assert!(recorder.frames().is_empty());
        recorder.start(2);
        for kind in ["a", "b", "c"] {
            recorder.record(&format!(r#"{{"type":"{kind}"}}"#));
        }
        let kinds: Vec<_> = recorder.frames().into_iter().filter_map(|f| f.kind).collect();
        assert_eq!(kinds, ["a", "b"]);
        assert_eq!(recorder.not_recorded.load(Relaxed), 1);
        assert_eq!(recorder.take().len(), 2);
        assert!(recorder.frames().is_empty());
        recorder.record(r#"{"type":"d"}"#);
        assert_eq!(recorder.frames()[0].kind.as_deref(), Some("d"));
    }
}
