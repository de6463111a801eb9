//! Event-driven refresh: an SQS queue fed by an EventBridge rule (CloudTrail "AWS API Call via
//! CloudTrail" events of Cloud Map, optionally ECS "ECS Task State Change" events).
//!
//! The consumer long-polls the queue (20 s waits, 10 messages), parses each message
//! ([`parse`]), re-reads every service a batch names at once (DiscoverInstances, through the API
//! budget; the re-read is the truth, so duplicates and out-of-order events are harmless), asks for
//! a resync when the topology changed or a service id is unknown, then deletes the whole batch:
//! messages that do not parse are deleted too, counted by reason, and never block the queue.
//! Up to [`BATCHES_IN_FLIGHT`] batches are processed at once (the next receive starts while
//! earlier batches wait for their reads), so a burst drains at the pace the API budget allows
//! rather than one batch's round trips at a time. The queue's depth is read every
//! [`DEPTH_INTERVAL`] (`cloudmap_mcp_events_queue_depth`).
//!
//! While the queue answers, the pollers use the slower safety-net cadence
//! ([`EventsSettings::revision_poll_max_interval`], [`EventsSettings::instances_refresh_interval`]).
//! When it does not (unreachable, access denied, deleted), they go back to the normal cadence at
//! once, the failure is logged and counted, readiness is not touched, and receiving is retried
//! with backoff.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName};
use futures::stream::{self, FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::budget::backoff;
use super::poller::{Poller, SvcKey};

pub mod parse;

use parse::{EcsTask, Skip, Target};

/// ReceiveMessage long-poll wait (the SQS maximum).
const WAIT_SECONDS: i32 = 20;
/// Messages per ReceiveMessage (the SQS maximum).
const MAX_MESSAGES: i32 = 10;
/// Batches processed at once. Their Cloud Map reads all go through the API budget, which keeps
/// the call rate and concurrency; this bounds the messages held invisible at once (40).
pub const BATCHES_IN_FLIGHT: usize = 4;
/// How often the queue's depth is read (GetQueueAttributes).
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(15);
/// Retry delays after a failed receive: from this, doubled, up to the cap.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);

/// The events queue and the cadence that applies while it delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsSettings {
    pub queue_url: String,
    /// An explicit SQS endpoint (flag); the SDK also reads AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL.
    pub endpoint_url: Option<String>,
    /// The Region of the queue: from a `https://sqs.REGION.amazonaws.com/...` URL, else Cloud Map's.
    pub region: Option<String>,
    /// Longest revision poll interval of a quiet service while the queue delivers.
    pub revision_poll_max_interval: Duration,
    /// Longest time a service's instances go unread while the queue delivers.
    pub instances_refresh_interval: Duration,
    /// Timeout of DeleteMessageBatch and GetQueueAttributes (ReceiveMessage adds its 20 s wait).
    pub call_timeout: Duration,
}

/// The Region in an SQS queue URL (`https://sqs.us-west-2.amazonaws.com/123/q`), if it has one.
pub fn region_of_queue_url(url: &str) -> Option<String> {
    let host = url.split_once("://")?.1.split(['/', ':']).next()?;
    let region = host.strip_prefix("sqs.")?.split_once(".amazonaws.com")?.0;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("no AWS Region for the events queue: give --aws-region or a queue URL of the form https://sqs.REGION.amazonaws.com/ACCOUNT/NAME")]
    NoRegion,
}

/// What kind of failure a queue call ended with (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueErrorKind {
    AccessDenied,
    QueueMissing,
    Throttled,
    Unavailable,
    Rejected,
}

impl QueueErrorKind {
    fn label(self) -> &'static str {
        match self {
            QueueErrorKind::AccessDenied => "access_denied",
            QueueErrorKind::QueueMissing => "queue_missing",
            QueueErrorKind::Throttled => "throttled",
            QueueErrorKind::Unavailable => "unavailable",
            QueueErrorKind::Rejected => "rejected",
        }
    }
}

#[derive(Debug)]
struct QueueError {
    operation: &'static str,
    kind: QueueErrorKind,
    message: String,
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed ({}): {}", self.operation, self.kind.label(), self.message)
    }
}

fn classify<E>(operation: &'static str, e: SdkError<E>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_string);
    let kind = match (code.as_deref(), status) {
        (Some(c), _) if c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist") => {
            QueueErrorKind::QueueMissing
        }
        (Some(c), _)
            if c.contains("AccessDenied") || c.contains("InvalidSecurity") || c.contains("InvalidClientTokenId") =>
        {
            QueueErrorKind::AccessDenied
        }
        (Some(c), _) if c.contains("Throttl") || c.contains("RequestThrottled") || c.contains("OverLimit") => {
            QueueErrorKind::Throttled
        }
        (_, Some(401 | 403)) => QueueErrorKind::AccessDenied,
        (_, Some(429)) => QueueErrorKind::Throttled,
        (_, Some(s)) if s >= 500 => QueueErrorKind::Unavailable,
        (_, None) => QueueErrorKind::Unavailable,
        _ => QueueErrorKind::Rejected,
    };
    let message = match e.message() {
        Some(m) => format!("{}{m}", code.map(|c| format!("{c}: ")).unwrap_or_default()),
        None => DisplayErrorContext(&e).to_string(),
    };
    QueueError { operation, kind, message }
}

/// Prometheus families of the events consumer.
pub struct EventsMetrics {
    messages: Family<Vec<(&'static str, String)>, Counter>,
    skipped: Family<Vec<(&'static str, String)>, Counter>,
    resyncs: Family<Vec<(&'static str, String)>, Counter>,
    queue_errors: Family<Vec<(&'static str, String)>, Counter>,
    reads: Family<Vec<(&'static str, String)>, Counter>,
    up: Gauge,
    depth: Gauge,
    lag: Histogram,
}

impl EventsMetrics {
    pub fn register(r: &mut Registry) -> Arc<Self> {
        let m = EventsMetrics {
            messages: Family::default(),
            skipped: Family::default(),
            resyncs: Family::default(),
            queue_errors: Family::default(),
            reads: Family::default(),
            up: Gauge::default(),
            depth: Gauge::default(),
            lag: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
        };
        r.register(
            "cloudmap_mcp_events_messages",
            "Events-queue messages processed (and deleted), by outcome: acted (a re-read or a resync), skipped (see cloudmap_mcp_events_skipped)",
            m.messages.clone(),
        );
        r.register(
            "cloudmap_mcp_events_skipped",
            "Events-queue messages deleted without action, by reason: not_json, not_an_event, foreign, unhandled_call, failed_call, no_service_id, no_task_arn, ecs_unmapped",
            m.skipped.clone(),
        );
        r.register(
            "cloudmap_mcp_events_resync_requests",
            "Resyncs asked for by events, by reason: service_created, service_deleted, service_updated, namespace_changed, unknown_service",
            m.resyncs.clone(),
        );
        r.register(
            "cloudmap_mcp_events_service_reads",
            "Services re-read because of events, by result: changed, unchanged, failed_or_gone",
            m.reads.clone(),
        );
        r.register(
            "cloudmap_mcp_events_queue_errors",
            "Failed events-queue calls, by operation and kind: access_denied, queue_missing, throttled, unavailable, rejected",
            m.queue_errors.clone(),
        );
        r.register(
            "cloudmap_mcp_events_queue_up",
            "1 while the events queue answers (the slower safety-net polling applies), 0 otherwise (normal polling)",
            m.up.clone(),
        );
        r.register(
            "cloudmap_mcp_events_queue_depth",
            "Messages waiting in the events queue (SQS ApproximateNumberOfMessages, read every 15 s; -1 until first read)",
            m.depth.clone(),
        );
        r.register(
            "cloudmap_mcp_events_lag_seconds",
            "From a message's arrival in the queue (SentTimestamp) to the end of its processing",
            m.lag.clone(),
        );
        for s in Skip::ALL {
            let _ = m.skipped.get_or_create(&vec![("reason", s.label().to_string())]);
        }
        m.depth.set(-1);
        Arc::new(m)
    }

    fn inc(f: &Family<Vec<(&'static str, String)>, Counter>, key: &'static str, value: &str) {
        f.get_or_create(&vec![(key, value.to_string())]).inc();
    }
}

/// Builds the SQS client from the standard AWS chain (retries are the consumer's).
pub async fn sqs_client(s: &EventsSettings) -> Result<aws_sdk_sqs::Client, EventsError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &s.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(url) = &s.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(EventsError::NoRegion);
    }
    let receive_timeout = Duration::from_secs(WAIT_SECONDS as u64) + s.call_timeout;
    let timeout = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(s.call_timeout.min(Duration::from_secs(5)))
        .operation_attempt_timeout(receive_timeout)
        .operation_timeout(receive_timeout)
        .build();
    let conf = aws_sdk_sqs::config::Builder::from(&sdk)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeout)
        .build();
    Ok(aws_sdk_sqs::Client::from_conf(conf))
}

/// The running consumer. `pollers` are the Cloud Map sources whose services events may name.
pub struct Consumer {
    client: aws_sdk_sqs::Client,
    settings: EventsSettings,
    pollers: Vec<Arc<Poller>>,
    metrics: Arc<EventsMetrics>,
}

impl Consumer {
    pub fn new(
        client: aws_sdk_sqs::Client,
        settings: EventsSettings,
        pollers: Vec<Arc<Poller>>,
        metrics: Arc<EventsMetrics>,
    ) -> Self {
        Consumer { client, settings, pollers, metrics }
    }

    fn set_active(&self, active: bool) {
        self.metrics.up.set(active as i64);
        for p in &self.pollers {
            p.set_events_active(active);
        }
    }

    /// Receives and processes batches, and reads the queue's depth, until the server stops.
    pub async fn run(self) {
        let Some(first) = self.pollers.first().cloned() else { return };
        tokio::select! {
            _ = futures::future::join(self.run_inner(), self.poll_depth()) => {}
            _ = first.closed() => {}
        }
    }

    /// Sets the depth gauge every [`DEPTH_INTERVAL`]. Failures are counted; the receive loop logs
    /// the queue's problems.
    async fn poll_depth(&self) {
        let mut tick = tokio::time::interval(DEPTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = tokio::time::timeout(
                self.settings.call_timeout,
                self.client
                    .get_queue_attributes()
                    .queue_url(&self.settings.queue_url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .send(),
            )
            .await;
            match r {
                Ok(Ok(out)) => {
                    let depth = out
                        .attributes()
                        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
                        .and_then(|v| v.parse::<i64>().ok());
                    if let Some(d) = depth {
                        self.metrics.depth.set(d);
                    }
                }
                Ok(Err(e)) => {
                    let e = classify("GetQueueAttributes", e);
                    Self::count_error(&self.metrics, &e);
                    tracing::debug!(error = %e, "cannot read the events queue's depth");
                }
                Err(_) => tracing::debug!("GetQueueAttributes (the events queue's depth) timed out"),
            }
        }
    }

    /// Runs `f` to completion while the batches in `batches` make progress.
    async fn while_processing<F: std::future::Future>(
        f: F,
        batches: &mut FuturesUnordered<impl std::future::Future<Output = ()>>,
    ) -> F::Output {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                Some(()) = batches.next(), if !batches.is_empty() => {}
            }
        }
    }

    async fn run_inner(&self) {
        tracing::info!(
            queue = %self.settings.queue_url,
            revision_poll_max_interval = ?self.settings.revision_poll_max_interval,
            instances_refresh_interval = ?self.settings.instances_refresh_interval,
            "events queue configured: services named by events are re-read at once; polling slows down while the queue answers"
        );
        self.describe_queue().await;
        let mut failures = 0u32;
        let mut last_kind: Option<QueueErrorKind> = None;
        let mut batches = FuturesUnordered::new();
        loop {
            while batches.len() >= BATCHES_IN_FLIGHT {
                batches.next().await;
            }
            match Self::while_processing(self.receive(), &mut batches).await {
                Ok(messages) => {
                    if failures > 0 || last_kind.is_some() {
                        tracing::info!(queue = %self.settings.queue_url, "events queue answers again: event-driven refresh resumed, slower polling again");
                    }
                    failures = 0;
                    last_kind = None;
                    self.set_active(true);
                    if !messages.is_empty() {
                        batches.push(self.process(messages));
                    }
                }
                Err(e) => {
                    self.set_active(false);
                    Self::count_error(&self.metrics, &e);
                    let wait = backoff(failures, RETRY_BASE, RETRY_CAP);
                    failures = failures.saturating_add(1);
                    if last_kind != Some(e.kind) {
                        tracing::error!(
                            queue = %self.settings.queue_url,
                            error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            "cannot receive from the events queue: polling Cloud Map at the normal cadence meanwhile (readiness unaffected); retrying with backoff{}",
                            hint(e.kind)
                        );
                    } else {
                        tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "events queue still failing");
                    }
                    last_kind = Some(e.kind);
                    Self::while_processing(tokio::time::sleep(wait), &mut batches).await;
                }
            }
        }
    }

    fn count_error(metrics: &EventsMetrics, e: &QueueError) {
        metrics
            .queue_errors
            .get_or_create(&vec![("operation", e.operation.to_string()), ("kind", e.kind.label().to_string())])
            .inc();
    }

    /// Logs what the queue is (or why it cannot be read yet); the receive loop handles failures.
    async fn describe_queue(&self) {
        let r = tokio::time::timeout(
            self.settings.call_timeout,
            self.client
                .get_queue_attributes()
                .queue_url(&self.settings.queue_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .attribute_names(QueueAttributeName::VisibilityTimeout)
                .send(),
        )
        .await;
        match r {
            Ok(Ok(out)) => {
                let attrs = out.attributes();
                let get = |k: QueueAttributeName| attrs.and_then(|a| a.get(&k)).map(String::as_str).unwrap_or("?");
                tracing::info!(
                    arn = get(QueueAttributeName::QueueArn),
                    visibility_timeout_s = get(QueueAttributeName::VisibilityTimeout),
                    "events queue found"
                );
            }
            Ok(Err(e)) => {
                let e = classify("GetQueueAttributes", e);
                Self::count_error(&self.metrics, &e);
                tracing::warn!(queue = %self.settings.queue_url, error = %e, "cannot describe the events queue{}", hint(e.kind));
            }
            Err(_) => tracing::warn!(queue = %self.settings.queue_url, "GetQueueAttributes timed out"),
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.settings.queue_url)
            .wait_time_seconds(WAIT_SECONDS)
            .max_number_of_messages(MAX_MESSAGES)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Acts on one batch, then deletes it.
    async fn process(&self, messages: Vec<Message>) {
        let mut ids: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut tasks: Vec<EcsTask> = Vec::new();
        let mut resyncs: BTreeSet<&'static str> = BTreeSet::new();
        let mut acted = 0usize;
        for m in &messages {
            match parse::parse(m.body().unwrap_or_default()) {
                Ok(Target::Service { id, call }) => {
                    tracing::debug!(message = m.message_id().unwrap_or_default(), service_id = %id, call, "event names a service");
                    ids.insert(id, call);
                    acted += 1;
                }
                Ok(Target::EcsTask(t)) => {
                    tracing::debug!(message = m.message_id().unwrap_or_default(), task = %t.task_id, "ECS task event");
                    tasks.push(t);
                }
                Ok(Target::Resync(reason)) => {
                    tracing::debug!(message = m.message_id().unwrap_or_default(), reason, "event asks for a resync");
                    resyncs.insert(reason);
                    acted += 1;
                }
                Err(skip) => self.skip(m, skip),
            }
        }
        // Service-attribute calls: the attributes are re-read (they move no instances revision).
        let (attribute_ids, ids): (BTreeMap<_, _>, BTreeMap<_, _>) = ids
            .into_iter()
            .partition(|(_, call)| matches!(*call, "UpdateServiceAttributes" | "DeleteServiceAttributes"));
        for id in attribute_ids.keys() {
            let mut known = false;
            for p in &self.pollers {
                if let Some(changed) = p.refresh_service_attributes(id).await {
                    known = true;
                    let label = if changed { "changed" } else { "unchanged" };
                    EventsMetrics::inc(&self.metrics.reads, "result", label);
                    break;
                }
            }
            if !known {
                resyncs.insert("unknown_service");
            }
        }
        // Which known service each names; the same service named twice is read once.
        let mut reads: BTreeMap<SvcKey, Arc<Poller>> = BTreeMap::new();
        for id in ids.keys() {
            match self.find_service(id) {
                Some((p, key)) => {
                    reads.insert(key, p);
                }
                None => {
                    tracing::debug!(service_id = %id, "event names a service not known (new, or not selected): resync");
                    resyncs.insert("unknown_service");
                }
            }
        }
        for t in &tasks {
            let found = self.find_ecs_task(t);
            if found.is_empty() {
                self.metrics_skip(Skip::EcsUnmapped);
            } else {
                acted += 1;
                reads.extend(found.into_iter().map(|(p, k)| (k, p)));
            }
        }
        let concurrency = self.pollers.first().map(|p| p.settings.budget.concurrency.max(1) as usize).unwrap_or(1);
        let results: Vec<(SvcKey, Option<bool>)> = stream::iter(reads)
            .map(|(key, p)| async move {
                let r = p.read_now(&key).await;
                (key, r)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (key, r) in results {
            let label = match r {
                Some(true) => "changed",
                Some(false) if self.read_failed(&key) => "failed_or_gone",
                Some(false) => "unchanged",
                None => "failed_or_gone",
            };
            tracing::debug!(namespace = %key.0, service = %key.1, result = label, "service re-read after an event");
            EventsMetrics::inc(&self.metrics.reads, "result", label);
        }
        for reason in resyncs {
            EventsMetrics::inc(&self.metrics.resyncs, "reason", reason);
            for p in &self.pollers {
                p.request_resync();
            }
        }
        self.metrics.messages.get_or_create(&vec![("outcome", "acted".to_string())]).inc_by(acted as u64);
        self.delete(&messages).await;
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as f64;
        for m in &messages {
            let sent = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<f64>().ok());
            if let Some(sent) = sent {
                self.metrics.lag.observe(((now_ms - sent) / 1000.0).max(0.0));
            }
        }
    }

    fn metrics_skip(&self, skip: Skip) {
        EventsMetrics::inc(&self.metrics.skipped, "reason", skip.label());
        self.metrics.messages.get_or_create(&vec![("outcome", "skipped".to_string())]).inc();
    }

    fn skip(&self, m: &Message, skip: Skip) {
        self.metrics_skip(skip);
        let body = m.body().unwrap_or_default();
        let shown: String = body.chars().take(200).collect();
        tracing::debug!(
            message = m.message_id().unwrap_or_default(),
            reason = skip.label(),
            body = %shown,
            "events-queue message skipped (deleted)"
        );
    }

    fn read_failed(&self, key: &SvcKey) -> bool {
        self.pollers.iter().any(|p| p.lock().services.get(key).is_some_and(|e| e.last_error.is_some()))
    }

    fn find_service(&self, id: &str) -> Option<(Arc<Poller>, SvcKey)> {
        self.pollers.iter().find_map(|p| {
            let st = p.lock();
            st.services.iter().find(|(_, e)| e.id == id).map(|(k, _)| (p.clone(), k.clone()))
        })
    }

    /// The services holding this task (instance id = task id), or any task of the same ECS
    /// service in the same cluster (a task starting is not registered yet).
    fn find_ecs_task(&self, t: &EcsTask) -> Vec<(Arc<Poller>, SvcKey)> {
        let mut out = Vec::new();
        for p in &self.pollers {
            let st = p.lock();
            for (key, e) in &st.services {
                let Some(d) = &e.data else { continue };
                let holds = d.instances.iter().any(|i| {
                    i.id == t.task_id
                        || (t.service.is_some()
                            && i.attributes.get("ECS_SERVICE_NAME") == t.service.as_ref()
                            && (t.cluster.is_none() || i.attributes.get("ECS_CLUSTER_NAME") == t.cluster.as_ref()))
                });
                if holds {
                    out.push((p.clone(), key.clone()));
                }
            }
        }
        out
    }

    /// Deletes a processed batch. A failed delete is logged and counted; the messages come back
    /// after the visibility timeout and are processed again (harmless: the re-read is the truth).
    async fn delete(&self, messages: &[Message]) {
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_string))
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let r = tokio::time::timeout(
            self.settings.call_timeout,
            self.client.delete_message_batch().queue_url(&self.settings.queue_url).set_entries(Some(entries)).send(),
        )
        .await;
        let err = match r {
            Ok(Ok(out)) if out.failed().is_empty() => return,
            Ok(Ok(out)) => QueueError {
                operation: "DeleteMessageBatch",
                kind: QueueErrorKind::Rejected,
                message: format!(
                    "{} of {} entries failed: {}",
                    out.failed().len(),
                    messages.len(),
                    out.failed().iter().map(|f| f.code()).collect::<Vec<_>>().join(", ")
                ),
            },
            Ok(Err(e)) => classify("DeleteMessageBatch", e),
            Err(_) => QueueError {
                operation: "DeleteMessageBatch",
                kind: QueueErrorKind::Unavailable,
                message: "timed out".into(),
            },
        };
        Self::count_error(&self.metrics, &err);
        tracing::warn!(error = %err, "cannot delete processed events-queue messages; they will be delivered again (harmless)");
    }
}

fn hint(kind: QueueErrorKind) -> &'static str {
    match kind {
        QueueErrorKind::AccessDenied => {
            " (the role needs sqs:ReceiveMessage, sqs:DeleteMessage and sqs:GetQueueAttributes on the queue, and kms:Decrypt for an encrypted queue with a customer key)"
        }
        QueueErrorKind::QueueMissing => " (the queue does not exist: check --events-queue-url)",
        _ => "",
    }
}

/// Starts the consumer in the background.
pub async fn start(
    settings: EventsSettings,
    pollers: Vec<Arc<Poller>>,
    registry: &mut Registry,
) -> Result<(), EventsError> {
    let client = sqs_client(&settings).await?;
    let metrics = EventsMetrics::register(registry);
    tokio::spawn(Consumer::new(client, settings, pollers, metrics).run());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_an_aws_queue_url() {
        assert_eq!(
            region_of_queue_url("https://sqs.eu-west-3.amazonaws.com/123456789012/q").as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(region_of_queue_url("https://sqs.cn-north-1.amazonaws.com.cn/1/q").as_deref(), Some("cn-north-1"));
        assert_eq!(region_of_queue_url("http://127.0.0.1:5000/123456789012/q"), None);
        assert_eq!(region_of_queue_url("https://queue.amazonaws.com/1/q"), None);
    }
}
