//! The per-type counters' names: which message types the application sends, each with its
//! counters' index (bounded: past [`MAX_TRACKED_KINDS`] types share one bucket).

use crate::stats::SendStats;

/// Distinct message types tracked separately in send counters; the rest share one bucket
/// (named [`OTHER_KIND`]), so at most this many plus one sets of counters exist.
pub(crate) const MAX_TRACKED_KINDS: usize = 64;
/// The name of the shared bucket of message types past [`MAX_TRACKED_KINDS`].
pub(crate) const OTHER_KIND: &str = "*other*";

/// What the application can be told about the message types it sends.
#[derive(Debug, Default)]
pub(super) struct Kinds {
    pub(super) names: Vec<String>,
    pub(super) stats: Vec<SendStats>,
}

impl Kinds {
    /// The index of `kind`'s counters. A linear scan: there are at most 64 names and a
    /// middleware sends a handful of types, so this beats hashing the name on every send.
    pub(super) fn intern(&mut self, kind: &str) -> u16 {
        if let Some(i) = self.position(kind) {
            return i;
        }
        let name = if self.names.len() >= MAX_TRACKED_KINDS {
            OTHER_KIND
        } else {
            kind
        };
        if let Some(i) = self.position(name) {
            return i;
        }
        self.names.push(name.to_owned());
        self.stats.push(SendStats::default());
        (self.names.len() - 1) as u16
    }

    fn position(&self, kind: &str) -> Option<u16> {
        self.names.iter().position(|n| n == kind).map(|i| i as u16)
    }
}
