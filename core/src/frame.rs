//! Wire types and the JSON codec of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md): one text frame, one JSON object.

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde_json::value::RawValue;
use serde_json::Value;
use thiserror::Error;

/// A message the client sends: a `type` and a `payload` (JSON `null` when there is none).
/// The pool adds the `id` when the message is a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The message type, such as `request_for_allocation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload; `null` for messages without one. Always present on the wire.
    pub payload: Value,
}

impl Outgoing {
    /// A message of `kind` with `payload`.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
        }
    }

    /// A message of `kind` whose payload is any serializable value.
    pub fn with_payload<T: Serialize>(
        kind: impl Into<String>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(kind, serde_json::to_value(payload)?))
    }

    /// The idempotency key of this message, if its payload carries one: [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s
    /// client-made `allocationId` of `request_for_allocation` and `use_allocation`.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self.kind.as_str() {
            "request_for_allocation" | "use_allocation" => self
                .payload
                .get("allocationId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty()),
            _ => None,
        }
    }
}

/// The borrowed shape that is actually serialized, so encoding never clones the payload.
#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// Initial buffer of [`encode`], beside the type's length.
const ENCODE_CAPACITY: usize = 192;

/// Encodes `message` as one JSON text frame, with `id` when it is a request.
pub fn encode(message: &Outgoing, id: Option<&str>) -> String {
    // Room for a typical frame (type, a small payload, a 36-byte id) so serializing does not
    // grow the buffer several times; a large payload still grows it geometrically.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY + message.kind.len());
    // Serializing a `Value` into a Vec cannot fail: no I/O, and map keys are always strings.
    serde_json::to_writer(
        &mut out,
        &WireOut {
            kind: &message.kind,
            payload: &message.payload,
            id,
        },
    )
    .expect("serializing a serde_json::Value cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// A request encoded before its id is known: the JSON frame with a placeholder id, so the
/// costly part of encoding can run outside whatever lock guards the [`Pool`](crate::Pool);
/// the pool writes the real id in place (same length, no re-encoding) when it takes the
/// request. Build it with [`EncodedRequest::new`] and hand it to
/// [`Pool::request`](crate::Pool::request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    frame: String,
    idempotency_key: bool,
}

/// The placeholder id of an [`EncodedRequest`]: as long as every hyphenated UUID.
const ID_PLACEHOLDER: &str = "00000000-0000-0000-0000-000000000000";

impl EncodedRequest {
    /// Encodes `message` as a request frame whose id is still to be written.
    pub fn new(message: &Outgoing) -> Self {
        Self {
            frame: encode(message, Some(ID_PLACEHOLDER)),
            idempotency_key: message.idempotency_key().is_some(),
        }
    }

    /// Whether the payload carries an idempotency key ([`Outgoing::idempotency_key`]).
    pub fn has_idempotency_key(&self) -> bool {
        self.idempotency_key
    }

    /// The frame with `id` written in place of the placeholder. `id` is a hyphenated UUID
    /// (36 bytes); the id is the frame's last field, so it sits just before the closing `"}`.
    pub(crate) fn into_frame(mut self, id: &str) -> String {
        debug_assert_eq!(id.len(), ID_PLACEHOLDER.len());
        // Cut the placeholder and the closing `"}`, then append the id and close again:
        // two short copies, no splice.
        self.frame.truncate(self.frame.len() - ID_PLACEHOLDER.len() - 2);
        self.frame.push_str(id);
        self.frame.push_str("\"}");
        self.frame
    }
}

impl From<&Outgoing> for EncodedRequest {
    fn from(message: &Outgoing) -> Self {
        Self::new(message)
    }
}

impl From<Outgoing> for EncodedRequest {
    fn from(message: Outgoing) -> Self {
        Self::new(&message)
    }
}

/// A fire-and-forget message encoded for [`Pool::send`](crate::Pool::send): its type (for the
/// per-type counters) and its frame. Made from an [`Outgoing`] (borrowed, so the caller keeps
/// the message to hand back on a refusal, or owned), for example outside the lock an adapter
/// holds around the pool, since encoding is most of a send's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSend<'a> {
    kind: Cow<'a, str>,
    frame: String,
    /// Whether the message carries an idempotency key ([`Outgoing::idempotency_key`]).
    keyed: bool,
}

impl<'a> EncodedSend<'a> {
    /// Encodes `message` as a frame with no id.
    pub fn new(message: &'a Outgoing) -> Self {
        Self {
            kind: Cow::Borrowed(&message.kind),
            frame: encode(message, None),
            keyed: message.idempotency_key().is_some(),
        }
    }

    /// The message type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether the message carries an idempotency key (an `allocationId`).
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// Its frame's length in bytes.
    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    pub(crate) fn into_parts(self) -> (Cow<'a, str>, String, bool) {
        (self.kind, self.frame, self.keyed)
    }
}

impl<'a> From<&'a Outgoing> for EncodedSend<'a> {
    fn from(message: &'a Outgoing) -> Self {
        Self::new(message)
    }
}

impl From<Outgoing> for EncodedSend<'static> {
    fn from(message: Outgoing) -> Self {
        let frame = encode(&message, None);
        let keyed = message.idempotency_key().is_some();
        Self {
            kind: Cow::Owned(message.kind),
            frame,
            keyed,
        }
    }
}

/// An incoming frame's payload, kept as the JSON text it arrived in: a reply is decoded
/// without building a tree for its payload, and whoever reads it parses it once, straight
/// into the type it wants ([`Payload::parse`], [`Incoming::payload_as`]) or into a
/// [`Value`] ([`Payload::to_value`]). The text is valid JSON (checked while decoding).
/// Equality compares the JSON values, not their spelling. Like any raw JSON value, it
/// deserializes from JSON text (`serde_json::from_str`, `from_slice`, `from_reader`), not
/// from an already parsed `Value`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The `null` payload (a frame without one).
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The payload as JSON text, exactly as it arrived.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Whether the payload is `null` (or absent).
    pub fn is_null(&self) -> bool {
        self.json() == "null"
    }

    /// Parses the payload into `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json())
    }

    /// The payload as a [`Value`]; `Null` in the one case where valid JSON is not a
    /// `Value`: a number beyond `f64` (use [`Payload::json`] or [`Payload::parse`] for those).
    pub fn to_value(&self) -> Value {
        self.parse().unwrap_or(Value::Null)
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self(serde_json::value::to_raw_value(&value).expect("a Value always serializes"))
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

/// A frame from the server. Unknown fields are ignored; only `type` is required.
///
/// Decoding is liberal ([PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md): a field of an unexpected type never makes a frame
/// unreadable): only a string `id` or `replyTo` is kept, `message` and `error` of any JSON
/// type are read as described on each field, and when a key appears more than once its last
/// occurrence wins (as with [`serde_json::Value`]). `Deserialize` follows the same rules as
/// [`decode`]; like [`Payload`], it reads JSON text (`serde_json::from_str`, `from_slice`,
/// `from_reader`), not an already parsed `Value`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incoming {
    /// `"success"`, `"error"`, or a message-specific type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload (`null` when absent), parsed only when read.
    pub payload: Payload,
    /// The frame's own id when it is a string; some servers echo the request id here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The id of the request this frame answers, when `replyTo` is a string.
    #[serde(rename = "replyTo", skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Optional human text: a string `message` as is, a `message` of another JSON type as its
    /// compact JSON text, `None` when absent or `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The denial text: `Some` exactly when the frame's `error` says no, that is when it is a
    /// non-empty string (its text), `true` (`"true"`), a non-zero number (its JSON text; a
    /// number beyond `f64` counts as non-zero), or a non-empty object or array (its compact
    /// JSON text). `None` when `error` is absent, `null`, `false`, `""`, `0`, `{}` or `[]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Incoming {
    /// The id this frame answers by [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s rule: `replyTo` when it is a non-empty
    /// string, otherwise `id` when it is one.
    pub fn correlation_id(&self) -> Option<&str> {
        match self.reply_to.as_deref() {
            Some(r) if !r.is_empty() => Some(r),
            _ => self.id.as_deref().filter(|s| !s.is_empty()),
        }
    }

    /// Whether this reply is an application-level denial: an `error` that says no (see the
    /// field; an empty one set by hand does not), or a `type` of `"error"` in any case.
    pub fn is_denial(&self) -> bool {
        self.error.as_deref().is_some_and(|e| !e.is_empty()) || self.kind.eq_ignore_ascii_case("error")
    }

    /// The denial's text: `error`, else `message`, else the type.
    pub fn denial_text(&self) -> &str {
        self.error
            .as_deref()
            .filter(|e| !e.is_empty())
            .or(self.message.as_deref())
            .unwrap_or(&self.kind)
    }

    /// The bytes of its text: the payload's JSON plus its type, ids, message and error. What a
    /// buffer of frames is charged for one (the client's event stream bounds them by it).
    pub fn text_len(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.kind.len()
            + self.payload.json().len()
            + text(&self.id)
            + text(&self.reply_to)
            + text(&self.message)
            + text(&self.error)
    }

    /// Deserializes the payload into a typed reply.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.payload.parse()
    }
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Owned raw values, so any JSON source works (`from_reader` cannot lend its input).
        deserializer.deserialize_map(IncomingVisitor::<Box<RawValue>, Box<RawValue>>(PhantomData))
    }
}

/// A field's value as raw JSON text, borrowed from the input or owned.
trait RawJson<'de>: Deserialize<'de> {
    /// The value's JSON text, exactly as it arrived (no surrounding whitespace).
    fn json(&self) -> &str;
}

impl<'de> RawJson<'de> for &'de RawValue {
    fn json(&self) -> &str {
        self.get()
    }
}

impl<'de> RawJson<'de> for Box<RawValue> {
    fn json(&self) -> &str {
        self.get()
    }
}

/// How a string field (`type`, `id`, `replyTo`) is read: its text when it is a string, `None`
/// for any other value. A raw value reads every value; [`Lenient`] is faster but fails on a
/// few.
trait StrField<'de>: Deserialize<'de> {
    /// The string, if the value is one.
    fn into_string(self) -> Option<String>;
}

impl<'de, R: RawJson<'de>> StrField<'de> for R {
    fn into_string(self) -> Option<String> {
        string_of(self.json())
    }
}

/// The fast reading of a string field (what [`decode`] tries first): a string is parsed as
/// for a `String`, any other value is skipped. Two values that a raw value accepts make it
/// fail with a syntax error: a number beyond `f64`, and a string with a lone surrogate escape
/// (such as `"\ud800"`); [`decode`] then reads the frame again with raw values.
struct Lenient(Option<String>);

impl<'de> StrField<'de> for Lenient {
    fn into_string(self) -> Option<String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Lenient {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor;
        impl<'de> Visitor<'de> for LenientVisitor {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient, E> {
                Ok(Lenient(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Lenient, E> {
                Ok(Lenient(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Lenient, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Lenient(None))
            }
        }
        deserializer.deserialize_any(LenientVisitor)
    }
}

/// The keys of an [`Incoming`]; anything else is ignored.
enum Key {
    Type,
    Payload,
    Id,
    ReplyTo,
    Message,
    Error,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "type" => Key::Type,
                    "payload" => Key::Payload,
                    "id" => Key::Id,
                    "replyTo" => Key::ReplyTo,
                    "message" => Key::Message,
                    "error" => Key::Error,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Reads a frame's object: the string fields with `S`, `message` and `error` as raw JSON
/// (`R`), the payload as a raw value and anything else ignored, so no value of any type fails
/// the frame. A later occurrence of a key replaces an earlier one; `message` and `error` are
/// interpreted once, at the end. Without a string `type`, a data error: the only one an
/// object can cause.
struct IncomingVisitor<S, R>(PhantomData<(S, R)>);

impl<'de, S: StrField<'de>, R: RawJson<'de>> Visitor<'de> for IncomingVisitor<S, R> {
    type Value = Incoming;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind: Option<S> = None;
        let mut payload: Option<Payload> = None;
        let mut id: Option<S> = None;
        let mut reply_to: Option<S> = None;
        let mut message: Option<R> = None;
        let mut error: Option<R> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = Some(map.next_value()?),
                Key::Payload => payload = Some(map.next_value()?),
                Key::Id => id = Some(map.next_value()?),
                Key::ReplyTo => reply_to = Some(map.next_value()?),
                Key::Message => message = Some(map.next_value()?),
                Key::Error => error = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(kind) = kind.and_then(S::into_string) else {
            return Err(de::Error::custom("frame has no string \"type\" field"));
        };
        Ok(Incoming {
            kind,
            payload: payload.unwrap_or_default(),
            id: id.and_then(S::into_string),
            reply_to: reply_to.and_then(S::into_string),
            message: message.and_then(|v| message_of(v.json())),
            error: error.and_then(|v| denial_of(v.json())),
        })
    }
}

/// The text of a JSON string value (`json` is one JSON value); `None` for a value of another
/// type, and for a string that is not Unicode (a lone surrogate escape such as `"\ud800"`,
/// which the raw value accepts and a `String` cannot hold).
fn string_of(json: &str) -> Option<String> {
    let inner = json.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str(json).ok()
    } else {
        Some(inner.to_owned())
    }
}

/// `message`: a string's text; `None` for `null`; any other value (or a string that is not
/// Unicode) as its compact JSON text.
fn message_of(json: &str) -> Option<String> {
    match json {
        "null" => None,
        _ => string_of(json).or_else(|| Some(compact(json))),
    }
}

/// `error`: `Some(text)` exactly when it is a denial (see [`Incoming::error`]).
fn denial_of(json: &str) -> Option<String> {
    match json.as_bytes().first()? {
        b'"' if json == r#""""# => None,
        // A string that is not Unicode is still a non-empty error: keep its JSON text.
        b'"' => string_of(json).or_else(|| Some(json.to_owned())),
        b'n' | b'f' => None,
        b't' => Some("true".to_owned()),
        b'{' | b'[' => {
            // Empty when the first thing after the bracket is the closing one.
            let inner = json[1..].trim_start_matches([' ', '\t', '\n', '\r']);
            (!inner.starts_with(['}', ']'])).then(|| compact(json))
        }
        // A number: non-zero when a digit of its mantissa is (so `1e400` counts, `-0.0e5`
        // does not).
        _ => json
            .bytes()
            .take_while(|b| !matches!(b, b'e' | b'E'))
            .any(|b| matches!(b, b'1'..=b'9'))
            .then(|| json.to_owned()),
    }
}

/// `json` (one valid JSON value) without the whitespace between its tokens.
fn compact(json: &str) -> String {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !json.bytes().any(is_space) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && is_space(c as u8) {
            continue;
        }
        out.push(c);
    }
    out
}

/// Why an incoming frame was skipped. The connection stays up; the pool counts it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than the configured maximum frame size.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Not valid JSON.
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON but not an object.
    #[error("frame is not a JSON object")]
    NotAnObject,
    /// An object without a string `type` (its last `type`, when there are several).
    #[error("frame has no string \"type\" field")]
    MissingType,
    /// A binary frame; the protocol is text-only.
    #[error("binary frame of {len} bytes (the protocol is text-only)")]
    Binary {
        /// The frame's length.
        len: usize,
    },
}

/// Decodes one text frame, checking its size first so a huge frame costs nothing to refuse.
/// Any JSON object with a string `type` decodes; see [`Incoming`] for how its fields are read.
pub fn decode(text: &str, max_frame_size: usize) -> Result<Incoming, FrameError> {
    if text.len() > max_frame_size {
        return Err(FrameError::TooLarge {
            len: text.len(),
            max: max_frame_size,
        });
    }
    match read::<Lenient>(text) {
        Ok(frame) => Ok(frame),
        // Perhaps a string field the fast reading cannot hold (see `Lenient`): raw values read
        // any valid JSON. (An invalid frame is read twice, up to its error.)
        Err(e) if e.is_syntax() => read::<&RawValue>(text).map_err(|e| classify(text, e)),
        Err(e) => Err(classify(text, e)),
    }
}

/// Reads a frame as `serde_json::from_str` would, its string fields with `S`, `message` and
/// `error` as raw values borrowed from `text`.
fn read<'a, S: StrField<'a>>(text: &'a str) -> Result<Incoming, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let frame = (&mut deserializer).deserialize_map(IncomingVisitor::<S, &'a RawValue>(PhantomData))?;
    deserializer.end()?;
    Ok(frame)
}

/// Turns a serde error into the precise reason; the slow path only runs for bad frames.
fn classify(text: &str, err: serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => FrameError::InvalidJson(err.to_string()),
        // Every value of an object is read as raw JSON, so a data error means that the frame
        // is not an object (reading stopped at its first byte) or has no string `type`. Either
        // way the rest of the text is still to be checked; `IgnoredAny` does it without
        // building anything.
        Category::Data => match serde_json::from_str::<IgnoredAny>(text) {
            Err(e) => FrameError::InvalidJson(e.to_string()),
            Ok(_) if text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') => {
                FrameError::MissingType
            }
            Ok(_) => FrameError::NotAnObject,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_is_kept_verbatim_and_parsed_on_demand() {
        let f = decode(
            r#"{"type":"success","payload": {"allocationId":"a-1", "n": [1, 2.5]},"replyTo":"r"}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(f.payload.json(), r#"{"allocationId":"a-1", "n": [1, 2.5]}"#);
        assert_eq!(f.payload, json!({"allocationId": "a-1", "n": [1, 2.5]}));
        assert_eq!(f.payload.to_string(), f.payload.json());
        #[derive(Deserialize)]
        struct Reply {
            #[serde(rename = "allocationId")]
            allocation_id: String,
        }
        assert_eq!(f.payload.parse::<Reply>().unwrap().allocation_id, "a-1");
        assert_eq!(f.payload_as::<Reply>().unwrap().allocation_id, "a-1");
        // Equality is of values, not spellings.
        assert_eq!(
            Payload::from(json!({"n": [1, 2.5], "allocationId": "a-1"})),
            f.payload
        );
        // Absent and null payloads are both null.
        let bare = decode(r#"{"type":"success"}"#, 1 << 20).unwrap();
        assert!(bare.payload.is_null() && bare.payload == Payload::null());
        assert!(decode(r#"{"type":"success","payload":null}"#, 1 << 20)
            .unwrap()
            .payload
            .is_null());
        // A payload that is not JSON makes the frame invalid, as before.
        assert!(matches!(
            decode(r#"{"type":"success","payload":{nope}}"#, 1 << 20),
            Err(FrameError::InvalidJson(_))
        ));
        // Round trip through serialization.
        let again = serde_json::to_string(&f).unwrap();
        assert_eq!(decode(&again, 1 << 20).unwrap(), f);
    }

    #[test]
    fn encoded_request_gets_its_id_in_place() {
        let m = Outgoing::new(
            "request_for_allocation",
            json!({"alias": "ledger-1", "amount": 1.5, "note": "a \"quoted\" }"}),
        );
        let id = "2f1c0a3e-5b7d-4e8f-9a6b-0c1d2e3f4a5b";
        let encoded = EncodedRequest::new(&m);
        assert!(!encoded.has_idempotency_key());
        assert_eq!(encoded.into_frame(id), encode(&m, Some(id)));
        let keyed = Outgoing::new("use_allocation", json!({"allocationId": "a-1"}));
        assert!(EncodedRequest::from(&keyed).has_idempotency_key());
        assert_eq!(
            EncodedRequest::new(&keyed).into_frame(id),
            encode(&keyed, Some(id))
        );
    }

    #[test]
    fn encode_request_and_fire_and_forget() {
        let m = Outgoing::new(
            "request_for_allocation",
            json!({"alias": "ledger-1", "amount": 1.0}),
        );
        let s = encode(&m, Some("abc"));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            json!({"type": "request_for_allocation", "payload": {"alias": "ledger-1", "amount": 1.0}, "id": "abc"})
        );
        let s = encode(&Outgoing::new("get_application_policies", Value::Null), None);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, json!({"type": "get_application_policies", "payload": null}));
        assert!(v.as_object().unwrap().contains_key("payload"));
    }

    #[test]
    fn decode_ignores_unknown_fields_and_correlates() {
        let f = decode(
            r#"{"type":"success","payload":{"a":1},"replyTo":"r","id":"i","extra":[1]}"#,
            1024,
        )
        .unwrap();
        assert_eq!(f.correlation_id(), Some("r"));
        let f = decode(r#"{"type":"success","replyTo":"","id":"i"}"#, 1024).unwrap();
        assert_eq!(f.correlation_id(), Some("i"));
        assert_eq!(f.payload, Value::Null);
        let f = decode(r#"{"type":"success"}"#, 1024).unwrap();
        assert_eq!(f.correlation_id(), None);
    }

    #[test]
    fn denials() {
        let f = decode(r#"{"type":"ERROR","replyTo":"r"}"#, 1024).unwrap();
        assert!(f.is_denial());
        let f = decode(
            r#"{"type":"success","error":"limit reached","replyTo":"r"}"#,
            1024,
        )
        .unwrap();
        assert!(f.is_denial());
        assert_eq!(f.denial_text(), "limit reached");
        let f = decode(r#"{"type":"success","error":"","replyTo":"r"}"#, 1024).unwrap();
        assert!(!f.is_denial());
    }

    #[test]
    fn bad_frames_are_classified() {
        assert!(matches!(decode("{nope", 1024), Err(FrameError::InvalidJson(_))));
        assert_eq!(decode("[1,2]", 1024), Err(FrameError::NotAnObject));
        assert_eq!(decode("42", 1024), Err(FrameError::NotAnObject));
        assert_eq!(decode(r#"{"payload":1}"#, 1024), Err(FrameError::MissingType));
        assert_eq!(decode(r#"{"type":7}"#, 1024), Err(FrameError::MissingType));
        // An array is not an object, even one whose first element could be a type.
        assert_eq!(decode(r#"["success"]"#, 1024), Err(FrameError::NotAnObject));
        assert_eq!(decode(r#""success""#, 1024), Err(FrameError::NotAnObject));
        assert!(matches!(decode("[1,2", 1024), Err(FrameError::InvalidJson(_))));
        assert!(matches!(decode("", 1024), Err(FrameError::InvalidJson(_))));
        assert!(matches!(
            decode(r#"{"type":"x"} trailing"#, 1024),
            Err(FrameError::InvalidJson(_))
        ));
        assert!(matches!(
            decode(r#"{"payload":1} trailing"#, 1024),
            Err(FrameError::InvalidJson(_))
        ));
        assert_eq!(decode(r#"{"type":null}"#, 1024), Err(FrameError::MissingType));
        assert_eq!(
            decode(r#"{"type":{"a":"b"}}"#, 1024),
            Err(FrameError::MissingType)
        );
        // A field of an unexpected type no longer makes the frame unreadable.
        let f = decode(r#"{"type":"x","replyTo":5}"#, 1024).unwrap();
        assert_eq!((f.reply_to.as_deref(), f.correlation_id()), (None, None));
        assert_eq!(
            decode(&"x".repeat(2000), 1024),
            Err(FrameError::TooLarge { len: 2000, max: 1024 })
        );
    }

    const ID: &str = "0b5f4a3c-8e2d-4f1a-9c3b-2d1e0f9a8b7c";

    /// Decodes `{"type":<kind>,"replyTo":ID,<rest>}`, which must be readable.
    fn reply(kind: &str, rest: &str) -> Incoming {
        let text = format!(r#"{{"type":"{kind}","replyTo":"{ID}"{rest}}}"#);
        decode(&text, 1 << 20).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_frames_of_the_bug_report_decode_and_correlate() {
        let f = decode(
            &format!(r#"{{"type":"error","replyTo":"{ID}","error":{{"code":429}}}}"#),
            1 << 20,
        )
        .unwrap();
        assert_eq!(f.correlation_id(), Some(ID));
        assert!(f.is_denial());
        assert_eq!(f.error.as_deref(), Some(r#"{"code":429}"#));
        assert_eq!(f.denial_text(), r#"{"code":429}"#);
        let f = decode(
            &format!(r#"{{"type":"success","replyTo":"{ID}","id":42}}"#),
            1 << 20,
        )
        .unwrap();
        assert_eq!(f.correlation_id(), Some(ID));
        assert_eq!(f.id, None);
        assert!(!f.is_denial());
    }

    #[test]
    fn error_that_denies_and_its_text() {
        // (the error's JSON, the denial text), with `type` "success" so only `error` decides.
        let cases = [
            (r#""limit reached""#, "limit reached"),
            (r#""quota \"q\" \u00e9""#, "quota \"q\" \u{e9}"),
            ("true", "true"),
            ("429", "429"),
            ("-1", "-1"),
            ("0.5", "0.5"),
            ("1e400", "1e400"),
            ("-2E-3", "-2E-3"),
            (r#"{"code":429}"#, r#"{"code":429}"#),
            // Compact text: whitespace between tokens goes, inside strings it stays.
            (
                "{ \"code\" : 429 ,\n \"why\": \"a b\" }",
                r#"{"code":429,"why":"a b"}"#,
            ),
            (r#"[ "x" , 1 ]"#, r#"["x",1]"#),
            ("[null]", "[null]"),
            ("[{}]", "[{}]"),
            // A string that is not Unicode still says no; its text is its JSON.
            (r#""\ud800""#, r#""\ud800""#),
        ];
        for (error, text) in cases {
            let f = reply("success", &format!(r#","error":{error}"#));
            assert!(f.is_denial(), "{error}");
            assert_eq!(f.error.as_deref(), Some(text), "{error}");
            assert_eq!(f.denial_text(), text, "{error}");
            assert_eq!(f.correlation_id(), Some(ID), "{error}");
        }
    }

    #[test]
    fn error_that_does_not_deny() {
        for error in [
            "null",
            "false",
            r#""""#,
            "0",
            "-0",
            "0.0",
            "0e10",
            "-0.000E-5",
            "{}",
            "{ \n }",
            "[]",
            "[ ]",
        ] {
            let f = reply("success", &format!(r#","error":{error}"#));
            assert!(!f.is_denial(), "{error}");
            assert_eq!(f.error, None, "{error}");
            assert_eq!(f.denial_text(), "success", "{error}");
            assert_eq!(f.correlation_id(), Some(ID), "{error}");
        }
        // Absent.
        assert!(!reply("success", "").is_denial());
        // A `type` of "error" is a denial whatever `error` says; its text falls back to
        // `message`, then to the type.
        let f = reply("Error", r#","error":false,"message":"no""#);
        assert!(f.is_denial());
        assert_eq!(f.denial_text(), "no");
        assert_eq!(reply("error", r#","error":0"#).denial_text(), "error");
    }

    #[test]
    fn ids_of_other_types_do_not_correlate_but_do_not_break_the_frame() {
        for other in [
            "42",
            "-1.5e3",
            "1e400",
            "true",
            "false",
            "null",
            r#"{"id":"x"}"#,
            r#"["x"]"#,
            "{}",
            "[]",
            r#""\ud800""#,
        ] {
            // A replyTo of another type: correlation falls back to a string id.
            let text = format!(r#"{{"type":"success","replyTo":{other},"id":"{ID}"}}"#);
            let f = decode(&text, 1024).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.reply_to, None, "{text}");
            assert_eq!(f.correlation_id(), Some(ID), "{text}");
            // An id of another type, with a string replyTo.
            let text = format!(r#"{{"type":"success","replyTo":"{ID}","id":{other}}}"#);
            let f = decode(&text, 1024).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.id, None, "{text}");
            assert_eq!(f.correlation_id(), Some(ID), "{text}");
            // Neither is a string: the frame decodes and answers nothing.
            let text = format!(r#"{{"type":"success","replyTo":{other},"id":{other}}}"#);
            let f = decode(&text, 1024).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((&f.id, &f.reply_to), (&None, &None), "{text}");
            assert_eq!(f.correlation_id(), None, "{text}");
        }
        // Escaped strings are unescaped; an empty replyTo falls back to id.
        let f = decode(r#"{"type":"success","replyTo":"a\u002Db","id":"c"}"#, 1024).unwrap();
        assert_eq!(f.correlation_id(), Some("a-b"));
        let f = decode(r#"{"type":"success","replyTo":"","id":7}"#, 1024).unwrap();
        assert_eq!(f.correlation_id(), None);
    }

    #[test]
    fn message_of_any_type() {
        let cases = [
            (r#""no""#, Some("no")),
            (r#""""#, Some("")),
            ("null", None),
            ("42", Some("42")),
            ("1e400", Some("1e400")),
            ("false", Some("false")),
            (
                r#"{ "en" : "no", "fr": "non" }"#,
                Some(r#"{"en":"no","fr":"non"}"#),
            ),
            (r#"["a", "b"]"#, Some(r#"["a","b"]"#)),
            (r#""\ud800""#, Some(r#""\ud800""#)),
        ];
        for (message, text) in cases {
            let f = reply("error", &format!(r#","message":{message}"#));
            assert_eq!(f.message.as_deref(), text, "{message}");
            assert_eq!(f.denial_text(), text.unwrap_or("error"), "{message}");
            assert_eq!(f.correlation_id(), Some(ID), "{message}");
        }
        assert_eq!(reply("error", "").message, None);
    }

    #[test]
    fn a_duplicated_key_keeps_its_last_occurrence() {
        let d = |text: &str| decode(text, 1024).unwrap_or_else(|e| panic!("{text}: {e}"));
        // type: the last one must be a string.
        assert_eq!(d(r#"{"type":7,"type":"success"}"#).kind, "success");
        assert_eq!(d(r#"{"type":"a","type":"b"}"#).kind, "b");
        assert_eq!(
            decode(r#"{"type":"success","type":7}"#, 1024),
            Err(FrameError::MissingType)
        );
        assert_eq!(
            decode(r#"{"type":"success","type":null}"#, 1024),
            Err(FrameError::MissingType)
        );
        // payload
        let f = d(r#"{"type":"s","payload":{"a":1},"payload":[2]}"#);
        assert_eq!(f.payload.json(), "[2]");
        assert!(d(r#"{"type":"s","payload":{"a":1},"payload":null}"#)
            .payload
            .is_null());
        // id
        assert_eq!(d(r#"{"type":"s","id":"a","id":"b"}"#).correlation_id(), Some("b"));
        assert_eq!(d(r#"{"type":"s","id":"a","id":5}"#).correlation_id(), None);
        assert_eq!(d(r#"{"type":"s","id":5,"id":"b"}"#).correlation_id(), Some("b"));
        // replyTo: a later one of another type overrides an earlier string.
        assert_eq!(
            d(r#"{"type":"s","replyTo":"a","replyTo":"b"}"#).correlation_id(),
            Some("b")
        );
        let f = d(r#"{"type":"s","replyTo":"a","replyTo":5,"id":"i"}"#);
        assert_eq!((f.reply_to.as_deref(), f.correlation_id()), (None, Some("i")));
        let f = d(r#"{"type":"s","replyTo":"a","replyTo":null}"#);
        assert_eq!((f.reply_to.as_deref(), f.correlation_id()), (None, None));
        assert_eq!(
            d(r#"{"type":"s","replyTo":{},"replyTo":"b"}"#).correlation_id(),
            Some("b")
        );
        // message
        assert_eq!(
            d(r#"{"type":"s","message":"a","message":"b"}"#)
                .message
                .as_deref(),
            Some("b")
        );
        assert_eq!(d(r#"{"type":"s","message":"a","message":null}"#).message, None);
        // error: a later non-denial clears an earlier denial, and the other way round.
        let f = d(r#"{"type":"s","error":"no","error":false}"#);
        assert!(!f.is_denial() && f.error.is_none());
        let f = d(r#"{"type":"s","error":"","error":{"code":1}}"#);
        assert_eq!(f.error.as_deref(), Some(r#"{"code":1}"#));
        let f = d(r#"{"type":"s","error":"first","error":"second"}"#);
        assert_eq!(f.denial_text(), "second");
    }

    #[test]
    fn ignored_fields_may_hold_anything() {
        let f = decode(
            &format!(
                r#"{{"extra":{{"type":7,"replyTo":{{"id":[1,{{"error":true}}]}}}},"type":"success","meta":[[{{}}],[[1e400]],"\ud800",null],"replyTo":"{ID}","id":{{"nested":{{"id":"x"}}}}, "tail" : {{ }} }}"#
            ),
            1024,
        )
        .unwrap();
        assert_eq!(f.kind, "success");
        assert_eq!(f.correlation_id(), Some(ID));
        assert_eq!(f.id, None);
        assert!(!f.is_denial());
        // Keys are compared unescaped.
        let f = decode(r#"{"\u0074ype":"success","reply\u0054o":"r"}"#, 1024).unwrap();
        assert_eq!((f.kind.as_str(), f.correlation_id()), ("success", Some("r")));
    }

    #[test]
    fn deserialize_is_as_liberal_as_decode() {
        let text = format!(
            r#"{{"type":7,"type":"error","replyTo":"{ID}","id":42,"message":{{"a":1}},"error":{{"code":429}},"payload":[1]}}"#
        );
        let f = decode(&text, 1 << 20).unwrap();
        assert_eq!(serde_json::from_str::<Incoming>(&text).unwrap(), f);
        assert_eq!(serde_json::from_slice::<Incoming>(text.as_bytes()).unwrap(), f);
        assert_eq!(
            serde_json::from_reader::<_, Incoming>(text.as_bytes()).unwrap(),
            f
        );
        assert!(serde_json::from_str::<Incoming>(r#"{"type":5}"#).is_err());
        assert!(serde_json::from_str::<Incoming>("[1]").is_err());
        // What decodes serializes with string fields, and decodes back the same.
        let again = serde_json::to_string(&f).unwrap();
        assert_eq!(decode(&again, 1 << 20).unwrap(), f);
    }

    #[test]
    fn idempotency_key_from_allocation_id() {
        let m = Outgoing::new(
            "use_allocation",
            json!({"alias":"a","amount":1.0,"allocationId":"k1"}),
        );
        assert_eq!(m.idempotency_key(), Some("k1"));
        let m = Outgoing::new("request_for_allocation", json!({"alias":"a","amount":1.0}));
        assert_eq!(m.idempotency_key(), None);
        let m = Outgoing::new("other", json!({"allocationId":"k1"}));
        assert_eq!(m.idempotency_key(), None);
    }
}
