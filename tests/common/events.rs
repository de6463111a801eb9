//! The events path against moto: an SQS queue (AWS SDK) fed by an EventBridge rule on the default
//! bus (moto routes `PutEvents` through matching rules to SQS targets), and CloudTrail-shaped
//! events as AWS sends them for Cloud Map calls. moto does not record its own API calls in
//! CloudTrail, so a test makes the Cloud Map call and then puts the event AWS would emit for it.
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

use super::http1;

pub struct Events {
    pub sqs: aws_sdk_sqs::Client,
    endpoint: String,
    pub queue_url: String,
    pub queue_arn: String,
}

/// The EventBridge rule pattern of deploy/: Cloud Map API calls recorded by CloudTrail, and ECS task state changes.
pub fn rule_pattern() -> Value {
    json!({
        "$or": [
            {"source": ["aws.servicediscovery"], "detail-type": ["AWS API Call via CloudTrail"],
             "detail": {"eventSource": ["servicediscovery.amazonaws.com"]}},
            {"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"]}
        ]
    })
}

impl Events {
    /// Creates the queue `name`, a rule on the default bus with `pattern`, and the queue as its target.
    pub async fn new(endpoint: &str, name: &str) -> Events {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .load()
            .await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let mut e = Events { sqs, endpoint: endpoint.to_string(), queue_url: String::new(), queue_arn: String::new() };
        e.create_queue(name).await;
        // moto's pattern matcher does not know "$or": one rule per alternative, as a user could write too.
        e.call(
            "PutRule",
            json!({"Name": "cloudmap", "EventPattern": json!({"source": ["aws.servicediscovery"],
                "detail-type": ["AWS API Call via CloudTrail"],
                "detail": {"eventSource": ["servicediscovery.amazonaws.com"]}}).to_string()}),
        )
        .await;
        e.call(
            "PutRule",
            json!({"Name": "ecs", "EventPattern": json!({"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"]}).to_string()}),
        )
        .await;
        for rule in ["cloudmap", "ecs"] {
            e.call("PutTargets", json!({"Rule": rule, "Targets": [{"Id": "queue", "Arn": e.queue_arn}]})).await;
        }
        e
    }

    pub async fn create_queue(&mut self, name: &str) {
        let out = self.sqs.create_queue().queue_name(name).send().await.expect("CreateQueue");
        self.queue_url = out.queue_url().expect("queue url").to_string();
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes");
        self.queue_arn = attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).expect("arn").clone();
    }

    pub async fn delete_queue(&self) {
        self.sqs.delete_queue().queue_url(&self.queue_url).send().await.expect("DeleteQueue");
    }

    /// Messages visible plus in flight.
    pub async fn pending(&self) -> u64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes");
        let a = out.attributes().expect("attributes");
        [QueueAttributeName::ApproximateNumberOfMessages, QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
            .iter()
            .map(|k| a.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    }

    /// A raw message straight into the queue (what a misconfigured rule or another sender could put there).
    pub async fn send_raw(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.queue_url).message_body(body).send().await.expect("SendMessage");
    }

    /// An EventBridge JSON-protocol call to moto (no SDK crate needed for three calls).
    async fn call(&self, op: &str, body: Value) -> Value {
        let addr = self.endpoint.trim_start_matches("http://").parse().expect("moto address");
        let headers = [
            ("Content-Type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("X-Amz-Target".to_string(), format!("AWSEvents.{op}")),
            (
                "Authorization".to_string(),
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/events/aws4_request, SignedHeaders=host, Signature=0".to_string(),
            ),
        ];
        let r =
            http1::request(addr, "POST", "/", &headers, body.to_string().as_bytes()).await.expect("EventBridge call");
        assert_eq!(r.status, 200, "EventBridge {op}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Puts an event on the default bus (routed by the rules).
    pub async fn put(&self, source: &str, detail_type: &str, detail: Value) {
        let out = self
            .call(
                "PutEvents",
                json!({"Entries": [{"Source": source, "DetailType": detail_type, "Detail": detail.to_string()}]}),
            )
            .await;
        assert_eq!(out["FailedEntryCount"], json!(0), "PutEvents: {out}");
    }

    /// The event CloudTrail sends to EventBridge for a Cloud Map call.
    pub async fn cloudtrail(&self, event_name: &str, request: Value, response: Value) {
        self.put(
            "aws.servicediscovery",
            "AWS API Call via CloudTrail",
            cloudtrail_detail(event_name, request, response),
        )
        .await;
    }
}

pub fn cloudtrail_detail(event_name: &str, request: Value, response: Value) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "AssumedRole", "invokedBy": "ecs.amazonaws.com"},
        "eventTime": "2026-12-01T04:00:00Z",
        "eventSource": "servicediscovery.amazonaws.com",
        "eventName": event_name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "ecs.amazonaws.com",
        "requestParameters": request,
        "responseElements": response,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "eventCategory": "Management"
    })
}
