//! What one events-queue message asks for. Pure: a message body in, a [`Target`] or the reason it
//! is skipped out. Bodies are EventBridge events as an SQS target receives them (no input
//! transformer): `{"detail-type", "source", "detail": {...}, ...}`.
//!
//! - CloudTrail "AWS API Call via CloudTrail" events of `servicediscovery.amazonaws.com`: the
//!   instance calls (`RegisterInstance`, `DeregisterInstance`, `UpdateInstanceCustomHealthStatus`)
//!   and the service-attribute calls (`UpdateServiceAttributes`, `DeleteServiceAttributes`) name
//!   the service in `detail.requestParameters.serviceId` (an id, or the service ARN for a shared
//!   namespace): that service is re-read. Calls that change the topology (`CreateService`,
//!   `DeleteService`, `UpdateService`, namespace calls) ask for a resync. A call that failed
//!   (`detail.errorCode`) changed nothing.
//! - ECS "ECS Task State Change" events: ECS registers a task in Cloud Map under the task id, with
//!   the `ECS_CLUSTER_NAME` and `ECS_SERVICE_NAME` attributes; the event gives the task ARN, the
//!   cluster ARN and `group` = `service:NAME`. The consumer maps these to the services that hold
//!   the task (or tasks of that ECS service).
use serde_json::Value;

/// What a message asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Re-read this Cloud Map service (by id).
    Service { id: String, call: &'static str },
    /// An ECS task changed: re-read the services that hold it.
    EcsTask(EcsTask),
    /// The topology changed: resync (the reason is a metric label).
    Resync(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcsTask {
    /// The last part of the task ARN: the Cloud Map instance id ECS registers.
    pub task_id: String,
    /// The cluster name (the last part of `clusterArn`).
    pub cluster: Option<String>,
    /// The ECS service name (`group` = `service:NAME`).
    pub service: Option<String>,
}

/// Why a message is deleted without any action. Labels are a fixed set (metric label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The body is not JSON.
    NotJson,
    /// JSON, but not an EventBridge event (no `detail-type` or no `detail` object).
    NotAnEvent,
    /// An event of another source or type (not Cloud Map CloudTrail, not ECS task state).
    Foreign,
    /// A Cloud Map call this server does not act on (tags, read calls).
    UnhandledCall,
    /// A Cloud Map call that failed (`errorCode` set): nothing changed.
    FailedCall,
    /// An instance or attribute call without a usable service id.
    NoServiceId,
    /// An ECS task event without a task ARN.
    NoTaskArn,
    /// An ECS task that no known service holds (not registered in Cloud Map, or not selected).
    EcsUnmapped,
}

impl Skip {
    pub const ALL: [Skip; 8] = [
        Skip::NotJson,
        Skip::NotAnEvent,
        Skip::Foreign,
        Skip::UnhandledCall,
        Skip::FailedCall,
        Skip::NoServiceId,
        Skip::NoTaskArn,
        Skip::EcsUnmapped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::NotAnEvent => "not_an_event",
            Skip::Foreign => "foreign",
            Skip::UnhandledCall => "unhandled_call",
            Skip::FailedCall => "failed_call",
            Skip::NoServiceId => "no_service_id",
            Skip::NoTaskArn => "no_task_arn",
            Skip::EcsUnmapped => "ecs_unmapped",
        }
    }
}

const CLOUDTRAIL_DETAIL_TYPE: &str = "AWS API Call via CloudTrail";
const CLOUD_MAP_EVENT_SOURCE: &str = "servicediscovery.amazonaws.com";
const ECS_DETAIL_TYPE: &str = "ECS Task State Change";

/// Parses one message body.
pub fn parse(body: &str) -> Result<Target, Skip> {
    let v: Value = serde_json::from_str(body).map_err(|_| Skip::NotJson)?;
    let (Some(detail_type), Some(detail)) =
        (v.get("detail-type").and_then(Value::as_str), v.get("detail").filter(|d| d.is_object()))
    else {
        return Err(Skip::NotAnEvent);
    };
    let source = v.get("source").and_then(Value::as_str).unwrap_or_default();
    if detail_type == CLOUDTRAIL_DETAIL_TYPE
        && detail.get("eventSource").and_then(Value::as_str) == Some(CLOUD_MAP_EVENT_SOURCE)
    {
        return cloud_map_call(detail);
    }
    if detail_type == ECS_DETAIL_TYPE && source == "aws.ecs" {
        return ecs_task(detail);
    }
    Err(Skip::Foreign)
}

fn cloud_map_call(detail: &Value) -> Result<Target, Skip> {
    let name = detail.get("eventName").and_then(Value::as_str).unwrap_or_default();
    if detail.get("errorCode").is_some_and(|c| !c.is_null()) {
        return Err(Skip::FailedCall);
    }
    let call: &'static str = match name {
        "RegisterInstance" => "RegisterInstance",
        "DeregisterInstance" => "DeregisterInstance",
        "UpdateInstanceCustomHealthStatus" => "UpdateInstanceCustomHealthStatus",
        "UpdateServiceAttributes" => "UpdateServiceAttributes",
        "DeleteServiceAttributes" => "DeleteServiceAttributes",
        "CreateService" => return Ok(Target::Resync("service_created")),
        "DeleteService" => return Ok(Target::Resync("service_deleted")),
        "UpdateService" => return Ok(Target::Resync("service_updated")),
        "CreateHttpNamespace"
        | "CreatePrivateDnsNamespace"
        | "CreatePublicDnsNamespace"
        | "DeleteNamespace"
        | "UpdateHttpNamespace"
        | "UpdatePrivateDnsNamespace"
        | "UpdatePublicDnsNamespace" => return Ok(Target::Resync("namespace_changed")),
        _ => return Err(Skip::UnhandledCall),
    };
    let raw = detail.pointer("/requestParameters/serviceId").and_then(Value::as_str).ok_or(Skip::NoServiceId)?;
    let id = service_id(raw).ok_or(Skip::NoServiceId)?;
    Ok(Target::Service { id: id.to_string(), call })
}

/// A service id, or the id inside a service ARN (`arn:aws:servicediscovery:REGION:ACCOUNT:service/srv-…`).
fn service_id(raw: &str) -> Option<&str> {
    let id = match raw.strip_prefix("arn:") {
        Some(rest) => rest.rsplit_once(":service/")?.1,
        None => raw,
    };
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some(id)
}

fn ecs_task(detail: &Value) -> Result<Target, Skip> {
    let task_arn = detail.get("taskArn").and_then(Value::as_str).ok_or(Skip::NoTaskArn)?;
    // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/TASK_ID (or task/TASK_ID, the old format).
    let task_id = task_arn
        .split_once(":task/")
        .and_then(|(_, rest)| rest.rsplit('/').next())
        .filter(|id| !id.is_empty())
        .ok_or(Skip::NoTaskArn)?;
    let cluster = detail
        .get("clusterArn")
        .and_then(Value::as_str)
        .and_then(|a| a.split_once(":cluster/"))
        .map(|(_, name)| name.to_string())
        .filter(|n| !n.is_empty());
    let service = detail
        .get("group")
        .and_then(Value::as_str)
        .and_then(|g| g.strip_prefix("service:"))
        .map(str::to_string)
        .filter(|n| !n.is_empty());
    Ok(Target::EcsTask(EcsTask { task_id: task_id.to_string(), cluster, service }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An EventBridge event as the SQS target receives it, for a CloudTrail-recorded Cloud Map call.
    pub fn cloudtrail(name: &str, request: Value, response: Value) -> String {
        json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.servicediscovery",
            "account": "123456789012",
            "time": "2026-12-01T04:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {
                "eventVersion": "1.09",
                "userIdentity": {"type": "AssumedRole", "invokedBy": "ecs.amazonaws.com"},
                "eventTime": "2026-12-01T04:00:00Z",
                "eventSource": "servicediscovery.amazonaws.com",
                "eventName": name,
                "awsRegion": "us-east-1",
                "requestParameters": request,
                "responseElements": response,
                "eventType": "AwsApiCall",
                "managementEvent": true,
            }
        })
        .to_string()
    }

    #[test]
    fn instance_and_attribute_calls_name_their_service() {
        for name in [
            "RegisterInstance",
            "DeregisterInstance",
            "UpdateInstanceCustomHealthStatus",
            "UpdateServiceAttributes",
            "DeleteServiceAttributes",
        ] {
            let body = cloudtrail(
                name,
                json!({"serviceId": "srv-e4anhexample0004", "instanceId": "i-1"}),
                json!({"operationId": "op"}),
            );
            assert_eq!(parse(&body), Ok(Target::Service { id: "srv-e4anhexample0004".into(), call: name }));
        }
        // A shared namespace's service, by ARN.
        let body = cloudtrail(
            "DeregisterInstance",
            json!({"serviceId": "arn:aws:servicediscovery:us-east-1:111122223333:service/srv-abc", "instanceId": "i"}),
            Value::Null,
        );
        assert!(matches!(parse(&body), Ok(Target::Service { id, .. }) if id == "srv-abc"));
    }

    #[test]
    fn topology_calls_ask_for_a_resync() {
        let cases = [
            ("CreateService", "service_created"),
            ("DeleteService", "service_deleted"),
            ("UpdateService", "service_updated"),
            ("CreateHttpNamespace", "namespace_changed"),
            ("DeleteNamespace", "namespace_changed"),
        ];
        for (name, reason) in cases {
            let body = cloudtrail(name, json!({"id": "srv-1", "name": "x"}), json!({"service": {"id": "srv-2"}}));
            assert_eq!(parse(&body), Ok(Target::Resync(reason)), "{name}");
        }
    }

    #[test]
    fn bad_or_foreign_messages_are_skipped_with_a_reason() {
        assert_eq!(parse("not json {"), Err(Skip::NotJson));
        assert_eq!(parse(""), Err(Skip::NotJson));
        assert_eq!(parse(r#"{"Event":"s3:TestEvent"}"#), Err(Skip::NotAnEvent));
        assert_eq!(parse(r#"{"detail-type":"x","detail":"string"}"#), Err(Skip::NotAnEvent));
        assert_eq!(parse("[1,2]"), Err(Skip::NotAnEvent));
        let other = json!({"detail-type": "AWS API Call via CloudTrail", "source": "aws.s3",
            "detail": {"eventSource": "s3.amazonaws.com", "eventName": "PutObject"}});
        assert_eq!(parse(&other.to_string()), Err(Skip::Foreign));
        let ec2 = json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}});
        assert_eq!(parse(&ec2.to_string()), Err(Skip::Foreign));
        assert_eq!(parse(&cloudtrail("TagResource", json!({}), Value::Null)), Err(Skip::UnhandledCall));
        assert_eq!(
            parse(&cloudtrail("RegisterInstance", json!({"instanceId": "i"}), Value::Null)),
            Err(Skip::NoServiceId)
        );
        assert_eq!(
            parse(&cloudtrail("RegisterInstance", json!({"serviceId": "srv/../x"}), Value::Null)),
            Err(Skip::NoServiceId)
        );
        assert_eq!(
            parse(&cloudtrail("RegisterInstance", json!({"serviceId": 7}), Value::Null)),
            Err(Skip::NoServiceId)
        );
        let mut failed: Value = serde_json::from_str(&cloudtrail(
            "DeregisterInstance",
            json!({"serviceId": "srv-1", "instanceId": "i"}),
            Value::Null,
        ))
        .unwrap();
        failed["detail"]["errorCode"] = json!("InstanceNotFound");
        assert_eq!(parse(&failed.to_string()), Err(Skip::FailedCall));
        let labels: std::collections::BTreeSet<_> = Skip::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(labels.len(), Skip::ALL.len(), "labels are distinct");
    }

    #[test]
    fn ecs_task_state_changes_name_the_task_cluster_and_service() {
        let ev = json!({
            "version": "0", "detail-type": "ECS Task State Change", "source": "aws.ecs",
            "detail": {
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/prod/0b69d5c0d655438fb5ad0e4e6d2b2b8f",
                "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "group": "service:checkout",
                "lastStatus": "RUNNING", "desiredStatus": "STOPPED"
            }
        });
        assert_eq!(
            parse(&ev.to_string()),
            Ok(Target::EcsTask(EcsTask {
                task_id: "0b69d5c0d655438fb5ad0e4e6d2b2b8f".into(),
                cluster: Some("prod".into()),
                service: Some("checkout".into()),
            }))
        );
        // Old ARN format, a standalone task (group family:...), no cluster.
        let ev = json!({"detail-type": "ECS Task State Change", "source": "aws.ecs",
            "detail": {"taskArn": "arn:aws:ecs:us-east-1:123456789012:task/abc", "group": "family:batch"}});
        assert_eq!(
            parse(&ev.to_string()),
            Ok(Target::EcsTask(EcsTask { task_id: "abc".into(), cluster: None, service: None }))
        );
        let ev = json!({"detail-type": "ECS Task State Change", "source": "aws.ecs", "detail": {"lastStatus": "x"}});
        assert_eq!(parse(&ev.to_string()), Err(Skip::NoTaskArn));
    }
}
