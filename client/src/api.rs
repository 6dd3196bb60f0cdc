//! [`UsageFlowApi`]: typed helpers for every message type of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md), provided over two
//! required methods (`request_with` and `send`), which the `Client` implements on every runtime.

use std::future::Future;

use serde_json::Value;
use usageflow_socket_core::messages::{
    self, AllocationReply, ApplicationConfigReply, BlockedEndpointsReply, PoliciesReply, ReportCallChain,
    RequestForAllocation, UseAllocation, UseAllocationReply,
};
use usageflow_socket_core::{Incoming, Outgoing, RequestOptions};

use crate::ClientError;

/// Decodes a reply's payload into `T`, or [`ClientError::InvalidReply`] naming the request's type.
pub fn decode_reply<T: serde::de::DeserializeOwned>(kind: &str, reply: &Incoming) -> Result<T, ClientError> {
    reply.payload_as::<T>().map_err(|e| ClientError::InvalidReply {
        kind: kind.to_owned(),
        error: e.to_string(),
    })
}

/// The UsageFlow API: generic requests and sends, plus a typed helper per message type.
///
/// Implementors provide [`UsageFlowApi::request_with`] and [`UsageFlowApi::send`]; every
/// other method is provided. The futures of [`UsageFlowApi::request_with`] and
/// [`UsageFlowApi::request`] are `Send`, so code generic over the client (such as a
/// benchmark's workload) can spawn them on a multi-threaded executor; those of the typed
/// helpers are `Send` on each concrete client.
#[allow(
    async_fn_in_trait,
    reason = "implemented by this workspace's clients, whose concrete futures are Send; callers use the concrete types"
)]
pub trait UsageFlowApi {
    /// Sends `message` as a request with `options` and waits for its reply. A denial is
    /// [`ClientError::Denied`]; a transport failure is an unavailable error.
    fn request_with(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> impl Future<Output = Result<Incoming, ClientError>> + Send;

    /// Sends `message` fire-and-forget (queued in the outbox while no connection is open).
    fn send(&self, message: Outgoing) -> Result<(), ClientError>;

    /// Sends `message` as a request with the configured timeout.
    fn request(&self, message: Outgoing) -> impl Future<Output = Result<Incoming, ClientError>> + Send {
        self.request_with(message, RequestOptions::default())
    }

    /// A request whose reply payload is decoded into `T`.
    async fn request_typed<T: serde::de::DeserializeOwned>(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<T, ClientError> {
        let kind = message.kind.clone();
        let reply = self.request_with(message, options).await?;
        decode_reply(&kind, &reply)
    }

    /// `request_for_allocation` as a request: the server's allocation id.
    async fn request_for_allocation(
        &self,
        allocation: &RequestForAllocation,
    ) -> Result<AllocationReply, ClientError> {
        self.request_typed(allocation.to_message(), RequestOptions::default())
            .await
    }

    /// `request_for_allocation` fire-and-forget, for an allocation that carries its own
    /// client-made `allocation_id`.
    fn send_request_for_allocation(&self, allocation: &RequestForAllocation) -> Result<(), ClientError> {
        self.send(allocation.to_message())
    }

    /// `use_allocation`: a request when `wait_for_confirmation` is `Some(true)` (the server's
    /// event id comes back), otherwise fire-and-forget (`Ok(None)`).
    async fn use_allocation(&self, usage: &UseAllocation) -> Result<Option<UseAllocationReply>, ClientError> {
        if usage.wait_for_confirmation == Some(true) {
            self.request_typed(usage.to_message(), RequestOptions::default())
                .await
                .map(Some)
        } else {
            self.send(usage.to_message()).map(|()| None)
        }
    }

    /// `get_application_policies` (read-only, so marked idempotent: re-sent once if its connection dies).
    async fn get_application_policies(&self) -> Result<PoliciesReply, ClientError> {
        self.request_typed(
            messages::get_application_policies(),
            RequestOptions::default().with_idempotent(true),
        )
        .await
    }

    /// `get_application_config` (read-only, so marked idempotent: re-sent once if its connection dies).
    async fn get_application_config(&self) -> Result<ApplicationConfigReply, ClientError> {
        self.request_typed(
            messages::get_application_config(),
            RequestOptions::default().with_idempotent(true),
        )
        .await
    }

    /// `get_blocked_endpoints` (read-only, so marked idempotent: re-sent once if its connection dies).
    async fn get_blocked_endpoints(&self) -> Result<BlockedEndpointsReply, ClientError> {
        self.request_typed(
            messages::get_blocked_endpoints(),
            RequestOptions::default().with_idempotent(true),
        )
        .await
    }

    /// `report_call_chain` (fire-and-forget).
    fn report_call_chain(&self, report: &ReportCallChain) -> Result<(), ClientError> {
        self.send(report.to_message())
    }

    /// Any message type by name, as a request with a JSON payload.
    async fn request_json(&self, kind: &str, payload: Value) -> Result<Incoming, ClientError> {
        self.request(Outgoing::new(kind, payload)).await
    }
}
