//! The per-stream ADS state machine, free of I/O: requests and snapshots in, responses out.
//!
//! Rules (SPEC section 1, the ones istiod's own xDS server uses):
//! - the first request for a type on a stream is always answered, whatever its nonce (istiod's
//!   initial requests carry a timestamp nonce the server never sent);
//! - after that, an empty nonce is a fresh subscription: answer it;
//! - a nonce that is not the last one sent for the type is stale: ignore it;
//! - a nonce equal to the last one sent is an ACK, or a NACK when `error_detail` is set: send nothing;
//! - a new snapshot is pushed for every subscribed type whose version changed, and only those;
//! - until the first snapshot exists nothing is answered; the pending types are answered when it comes.
//!
//! With `--shards N` a stream belongs to the shard of the port it came in on: its ServiceEntry
//! kinds carry that shard's entries only, every other kind is answered as on any stream, and a
//! snapshot that leaves the shard unchanged pushes nothing on it.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{EncodedType, ResourceSnapshot};
use crate::proto::DiscoveryRequest;

/// Limits on what one client may ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Distinct type URLs per stream.
    pub max_types: usize,
    pub max_type_url_len: usize,
    pub max_resource_names: usize,
    /// Longest `node.id` accepted (istiod's is about 100 bytes).
    pub max_node_id_len: usize,
    /// Requests per second read from one stream, sustained (istiod sends a few dozen when it
    /// connects, then one ACK per push). Beyond it the server reads the stream's requests at this
    /// rate, and HTTP/2 flow control slows the client down; pushes to it are not delayed.
    pub max_requests_per_second: u32,
    /// Requests read at once above the rate (token bucket size).
    pub request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_types: 64,
            max_type_url_len: 256,
            max_resource_names: 10_000,
            max_node_id_len: 1024,
            max_requests_per_second: 1000,
            request_burst: 1000,
        }
    }
}

/// The per-stream request bound: a token bucket refilled at `rate` per second up to `burst`.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl RequestBudget {
    pub fn new(limits: &Limits, now: std::time::Instant) -> Self {
        let burst = f64::from(limits.request_burst.max(1));
        RequestBudget { rate: f64::from(limits.max_requests_per_second.max(1)), burst, tokens: burst, last: now }
    }

    /// Spends one request. Returns how long to wait before reading the next one (zero: go on).
    pub fn spend(&mut self, now: std::time::Instant) -> std::time::Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A request that ends the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("type_url is required on an aggregated (ADS) stream")]
    EmptyTypeUrl,
    #[error("type_url is {0} bytes long; the limit is {1}")]
    TypeUrlTooLong(usize, usize),
    #[error("request names {0} resources; the limit is {1}")]
    TooManyResourceNames(usize, usize),
    #[error("stream subscribed to more than {0} distinct type URLs")]
    TooManyTypes(usize),
    #[error("node.id is {0} bytes long; the limit is {1}")]
    NodeIdTooLong(usize, usize),
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TooManyTypes(_) => tonic::Status::resource_exhausted(e.to_string()),
            _ => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// A response to send: the resources of `body` under `type_url`.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub type_url: String,
    pub nonce: String,
    pub body: Arc<EncodedType>,
    /// Serial of the snapshot it came from.
    pub serial: u64,
}

/// What a request amounted to.
#[derive(Debug)]
pub enum Action {
    Respond(Outgoing),
    /// No snapshot yet: answered once one exists.
    Deferred,
    Ack { version: String },
    Nack { version: String, message: String },
    Stale { nonce: String },
}

/// What this stream knows of one type URL.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TypeState {
    pub last_sent_version: Option<String>,
    pub last_sent_nonce: Option<String>,
    pub last_acked_version: Option<String>,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    #[serde(skip)]
    pending: bool,
}

/// The node id as logged and shown in `/debug/clients`: control characters escaped, so a client
/// cannot forge log lines with a newline in its id.
pub fn display_node_id(id: &str) -> String {
    if id.chars().any(char::is_control) {
        id.escape_debug().to_string()
    } else {
        id.to_string()
    }
}

/// Per-stream protocol state.
#[derive(Debug)]
pub struct StreamState {
    limits: Limits,
    nonce_seq: u64,
    types: BTreeMap<String, TypeState>,
    node_id: Option<String>,
    /// The shard whose ServiceEntries this stream serves (0 without sharding).
    shard: usize,
}

impl StreamState {
    pub fn new(limits: Limits) -> Self {
        StreamState { limits, nonce_seq: 0, types: BTreeMap::new(), node_id: None, shard: 0 }
    }

    /// A stream of shard `shard` (see the module doc).
    pub fn with_shard(mut self, shard: usize) -> Self {
        self.shard = shard;
        self
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    pub fn types(&self) -> &BTreeMap<String, TypeState> {
        &self.types
    }

    fn next_nonce(&mut self) -> String {
        self.nonce_seq += 1;
        self.nonce_seq.to_string()
    }

    fn respond(&mut self, type_url: &str, snap: &ResourceSnapshot) -> Outgoing {
        let body = snap.for_type(type_url, self.shard).clone();
        let nonce = self.next_nonce();
        let st = self.types.get_mut(type_url).expect("type registered before responding");
        st.last_sent_version = Some(body.version.clone());
        st.last_sent_nonce = Some(nonce.clone());
        st.responses += 1;
        st.pending = false;
        Outgoing { type_url: type_url.to_string(), nonce, body, serial: snap.serial }
    }

    /// Handles one request. `snap` is the current snapshot, if any.
    pub fn on_request(&mut self, req: &DiscoveryRequest, snap: Option<&ResourceSnapshot>) -> Result<Action, RequestError> {
        let t = req.type_url.as_str();
        if t.is_empty() {
            return Err(RequestError::EmptyTypeUrl);
        }
        if t.len() > self.limits.max_type_url_len {
            return Err(RequestError::TypeUrlTooLong(t.len(), self.limits.max_type_url_len));
        }
        if req.resource_names.len() > self.limits.max_resource_names {
            return Err(RequestError::TooManyResourceNames(req.resource_names.len(), self.limits.max_resource_names));
        }
        if let Some(node) = &req.node {
            if node.id.len() > self.limits.max_node_id_len {
                return Err(RequestError::NodeIdTooLong(node.id.len(), self.limits.max_node_id_len));
            }
            if self.node_id.is_none() {
                self.node_id = Some(display_node_id(&node.id));
            }
        }
        let first = !self.types.contains_key(t);
        if first && self.types.len() >= self.limits.max_types {
            return Err(RequestError::TooManyTypes(self.limits.max_types));
        }
        let st = self.types.entry(t.to_string()).or_default();
        let nonce = req.response_nonce.as_str();
        if !first && !nonce.is_empty() {
            if st.last_sent_nonce.as_deref() != Some(nonce) {
                return Ok(Action::Stale { nonce: nonce.to_string() });
            }
            if let Some(err) = &req.error_detail {
                st.nacks += 1;
                st.last_nack = Some(err.message.clone());
                return Ok(Action::Nack { version: req.version_info.clone(), message: err.message.clone() });
            }
            st.acks += 1;
            st.last_acked_version = Some(req.version_info.clone());
            return Ok(Action::Ack { version: req.version_info.clone() });
        }
        match snap {
            Some(snap) => Ok(Action::Respond(self.respond(t, snap))),
            None => {
                st.pending = true;
                Ok(Action::Deferred)
            }
        }
    }

    /// A new snapshot: responses for pending types and for subscribed types whose version changed.
    pub fn on_snapshot(&mut self, snap: &ResourceSnapshot) -> Vec<Outgoing> {
        let due: Vec<String> = self
            .types
            .iter()
            .filter(|(t, st)| {
                st.pending
                    || (st.last_sent_version.is_some()
                        && st.last_sent_version.as_deref() != Some(snap.for_type(t, self.shard).version.as_str()))
            })
            .map(|(t, _)| t.clone())
            .collect();
        due.iter().map(|t| self.respond(t, snap)).collect()
    }
}

#[cfg(test)]
mod tests;
