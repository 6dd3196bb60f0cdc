//! Names and options: [`ConnId`] (a socket of the pool), [`RequestId`] and its hasher,
//! [`RequestOptions`], and [`SlotState`].

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use uuid::Uuid;

/// One socket of the pool: its slot and the dial generation. The generation grows with every
/// dial, so a late event from an old socket names a stale generation and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ConnId {
    /// Slot index, `0..pool_size`.
    pub slot: u16,
    /// Dial generation of the slot.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot, self.generation)
    }
}

/// A request's id: a UUID drawn from the pool's seeded generator, unique for the pool's life.
///
/// It hashes as one `u64` (its two halves folded), which [`RequestIdHasher`] takes as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestId(pub Uuid);

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (high, low) = self.0.as_u64_pair();
        state.write_u64(high ^ low);
    }
}

/// The hasher of maps keyed by [`RequestId`]: the id's folded bits, unmixed.
///
/// The pool's ids are random already (UUID v4 bits from its seeded generator; the fixed
/// version and variant bits are folded into random ones), so mixing them again buys nothing,
/// and a fixed hasher keeps iteration order a function of the inputs. Flooding is not a
/// concern: only the pool inserts ids (its own); a server's reply is only looked up, after
/// parsing into a UUID.
///
/// Public only because [`RequestIdBuildHasher`] names it (the `private_interfaces` lint);
/// use it through that alias.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdHasher(u64);

impl Hasher for RequestIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `RequestId`; any other key still hashes deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// Builds [`RequestIdHasher`]s.
pub type RequestIdBuildHasher = BuildHasherDefault<RequestIdHasher>;

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Options of one request: `RequestOptions::default()`, or [`RequestOptions::timeout`], then
/// the `with_` methods. Non-exhaustive, so options can be added without breaking callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Overrides the configured request timeout.
    pub timeout: Option<Duration>,
    /// Marks the request safe to re-send once if its connection is lost before the reply.
    /// A request whose payload carries a client-made `allocationId` is idempotent without
    /// this flag only when the server deduplicates on it
    /// ([`ConfigBuilder::server_deduplicates_allocation_ids`](crate::ConfigBuilder)).
    pub idempotent: bool,
    /// The slot this request leans to (any number, taken modulo the pool size). It only
    /// breaks ties: the request still goes to an open connection with the fewest pending
    /// requests, and among those tied for fewest, the preferred slot wins; without a
    /// preference, ties rotate round-robin. A caller that keeps to one slot keeps to one
    /// connection while the pool is balanced, so requests whose replies arrived together go
    /// out together, in one write, as a pipelined client's would.
    pub affinity: Option<u32>,
}

impl RequestOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        Self::default().with_timeout(timeout)
    }

    /// These options with a timeout ([`RequestOptions::timeout`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// These options with the request marked idempotent or not
    /// ([`RequestOptions::idempotent`]).
    #[must_use]
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// These options with a preferred slot ([`RequestOptions::affinity`]).
    #[must_use]
    pub fn with_affinity(mut self, slot: u32) -> Self {
        self.affinity = Some(slot);
        self
    }
}

/// The state of one slot, for [`crate::Pool::slot_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Never dialed (waiting for `connect`, or a staggered first dial).
    Idle,
    /// Dialing.
    Dialing,
    /// Open.
    Open,
    /// Waiting to dial again.
    Backoff,
    /// Out of attempts; re-armed by the next request, send or connect.
    Exhausted,
    /// The pool is closed.
    Closed,
}
