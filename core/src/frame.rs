//! Wire types and the JSON codec of PROTOCOL.md: one text frame, one JSON object.

use serde::{Deserialize, Serialize};
use std::fmt;

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

    /// The idempotency key of this message, if its payload carries one: PROTOCOL.md's
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
/// [`Pool::request_encoded`](crate::Pool::request_encoded).
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incoming {
    /// `"success"`, `"error"`, or a message-specific type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload (`null` when absent), parsed only when read.
    #[serde(default)]
    pub payload: Payload,
    /// The frame's own id; some servers echo the request id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The id of the request this frame answers.
    #[serde(default, rename = "replyTo", skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Optional human text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Optional error text; non-empty means the server said no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Incoming {
    /// The id this frame answers by PROTOCOL.md's rule: `replyTo` when present and non-empty,
    /// otherwise `id`.
    pub fn correlation_id(&self) -> Option<&str> {
        match self.reply_to.as_deref() {
            Some(r) if !r.is_empty() => Some(r),
            _ => self.id.as_deref().filter(|s| !s.is_empty()),
        }
    }

    /// Whether this reply is an application-level denial: a non-empty `error`, or a `type`
    /// of `"error"` in any case.
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

    /// Deserializes the payload into a typed reply.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.payload.parse()
    }
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
    /// An object without a string `type`.
    #[error("frame has no string \"type\" field")]
    MissingType,
    /// A field has the wrong JSON type (for example a numeric `replyTo`).
    #[error("frame has a malformed field: {0}")]
    BadField(String),
    /// A binary frame; the protocol is text-only.
    #[error("binary frame of {len} bytes (the protocol is text-only)")]
    Binary {
        /// The frame's length.
        len: usize,
    },
}

/// Decodes one text frame, checking its size first so a huge frame costs nothing to refuse.
pub fn decode(text: &str, max_frame_size: usize) -> Result<Incoming, FrameError> {
    if text.len() > max_frame_size {
        return Err(FrameError::TooLarge {
            len: text.len(),
            max: max_frame_size,
        });
    }
    match serde_json::from_str::<Incoming>(text) {
        Ok(frame) => Ok(frame),
        Err(e) => Err(classify(text, e)),
    }
}

/// Turns a serde error into the precise reason; the slow path only runs for bad frames.
fn classify(text: &str, err: serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => FrameError::InvalidJson(err.to_string()),
        Category::Data => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => match map.get("type") {
                Some(Value::String(_)) => FrameError::BadField(err.to_string()),
                _ => FrameError::MissingType,
            },
            Ok(_) => FrameError::NotAnObject,
            Err(e) => FrameError::InvalidJson(e.to_string()),
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
        assert!(matches!(
            decode(r#"{"type":"x","replyTo":5}"#, 1024),
            Err(FrameError::BadField(_))
        ));
        assert_eq!(
            decode(&"x".repeat(2000), 1024),
            Err(FrameError::TooLarge { len: 2000, max: 1024 })
        );
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
