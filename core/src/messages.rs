//! Typed payloads for every message type of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s table. Field names are camelCase on
//! the wire; unknown fields are ignored when reading.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::frame::Outgoing;

/// `request_for_allocation`.
pub const REQUEST_FOR_ALLOCATION: &str = "request_for_allocation";
/// `use_allocation`.
pub const USE_ALLOCATION: &str = "use_allocation";
/// `get_application_policies`.
pub const GET_APPLICATION_POLICIES: &str = "get_application_policies";
/// `get_application_config`.
pub const GET_APPLICATION_CONFIG: &str = "get_application_config";
/// `get_blocked_endpoints`.
pub const GET_BLOCKED_ENDPOINTS: &str = "get_blocked_endpoints";
/// `report_call_chain`.
pub const REPORT_CALL_CHAIN: &str = "report_call_chain";

/// Payload of `request_for_allocation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestForAllocation {
    /// Ledger identifier.
    pub alias: String,
    /// Amount to allocate.
    pub amount: f64,
    /// Optional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Client-made allocation id (fire-and-forget use, and the idempotency key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
}

/// Reply payload of `request_for_allocation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AllocationReply {
    /// The allocation's id.
    pub allocation_id: String,
}

/// Payload of `use_allocation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UseAllocation {
    /// Ledger identifier.
    pub alias: String,
    /// Amount used.
    pub amount: f64,
    /// The allocation being used.
    pub allocation_id: String,
    /// Whether the caller waits for the server's confirmation (sent as a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_confirmation: Option<bool>,
    /// Optional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Reply payload of `use_allocation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct UseAllocationReply {
    /// The recorded event's id.
    pub event_id: String,
}

/// Reply payload of `get_application_policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PoliciesReply {
    /// The policies, as the server sends them.
    #[serde(default)]
    pub policies: Vec<Value>,
    /// Total number of policies.
    #[serde(default)]
    pub total: i64,
    /// Whether the account reached its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_reach_limit: Option<bool>,
}

/// Reply payload of `get_application_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApplicationConfigReply {
    /// Paths to monitor.
    #[serde(default)]
    pub monitoring_paths: Vec<Value>,
    /// Endpoints never metered.
    #[serde(default)]
    pub whitelist_endpoints: Vec<Value>,
    /// Whether endpoint discovery is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_disabled: Option<bool>,
    /// Whether every function allocation is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_all_function_allocations: Option<bool>,
    /// Whether the account reached its limit.
    #[serde(default)]
    pub account_reach_limit: bool,
}

/// One blocked endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BlockedEndpoint {
    /// URL pattern.
    #[serde(default)]
    pub url: String,
    /// HTTP method.
    #[serde(default)]
    pub method: String,
    /// The blocked identity.
    #[serde(default)]
    pub identity: String,
}

/// Reply payload of `get_blocked_endpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BlockedEndpointsReply {
    /// The blocked endpoints.
    #[serde(default)]
    pub endpoints: Vec<BlockedEndpoint>,
    /// Total number.
    #[serde(default)]
    pub total: i64,
    /// Whether the account reached its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_reach_limit: Option<bool>,
}

/// Payload of `report_call_chain` (fire-and-forget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReportCallChain {
    /// HTTP method of the host request.
    pub method: String,
    /// URL of the host request.
    pub url: String,
    /// The call chain, as the middleware records it.
    pub call_chain: Value,
    /// When it happened (the middleware's choice of unit; usually Unix milliseconds).
    pub timestamp: Value,
    /// The host request's UsageFlow id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usageflow_request_id: Option<String>,
}

fn message<T: Serialize>(kind: &str, payload: &T) -> Outgoing {
    // These payload types hold only strings, numbers, maps and JSON values: they always serialize.
    Outgoing::with_payload(kind, payload).expect("typed payloads always serialize")
}

impl RequestForAllocation {
    /// The outgoing message.
    pub fn to_message(&self) -> Outgoing {
        message(REQUEST_FOR_ALLOCATION, self)
    }
}

impl UseAllocation {
    /// The outgoing message.
    pub fn to_message(&self) -> Outgoing {
        message(USE_ALLOCATION, self)
    }
}

impl ReportCallChain {
    /// The outgoing message.
    pub fn to_message(&self) -> Outgoing {
        message(REPORT_CALL_CHAIN, self)
    }
}

/// `get_application_policies` (payload `null`).
pub fn get_application_policies() -> Outgoing {
    Outgoing::new(GET_APPLICATION_POLICIES, Value::Null)
}

/// `get_application_config` (payload `null`).
pub fn get_application_config() -> Outgoing {
    Outgoing::new(GET_APPLICATION_CONFIG, Value::Null)
}

/// `get_blocked_endpoints` (payload `null`).
pub fn get_blocked_endpoints() -> Outgoing {
    Outgoing::new(GET_BLOCKED_ENDPOINTS, Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn camel_case_on_the_wire() {
        let m = UseAllocation {
            alias: "a".into(),
            amount: 2.0,
            allocation_id: "x".into(),
            wait_for_confirmation: Some(true),
            metadata: None,
        }
        .to_message();
        assert_eq!(m.kind, USE_ALLOCATION);
        assert_eq!(
            m.payload,
            json!({"alias":"a","amount":2.0,"allocationId":"x","waitForConfirmation":true})
        );
        let r: ApplicationConfigReply = serde_json::from_value(json!({
            "monitoringPaths": ["/a"], "whitelistEndpoints": [], "accountReachLimit": true, "newField": 1
        }))
        .unwrap();
        assert!(r.account_reach_limit);
        let b: BlockedEndpointsReply = serde_json::from_value(json!({
            "endpoints": [{"url": "/x", "method": "GET", "identity": "u1"}], "total": 1
        }))
        .unwrap();
        assert_eq!(b.endpoints[0].identity, "u1");
        assert_eq!(get_application_policies().payload, Value::Null);
    }
}
