# cloudmap-mcp event-driven refresh: an EventBridge rule on the default bus sends the CloudTrail
# "AWS API Call via CloudTrail" events of AWS Cloud Map (and optionally ECS task state changes) to
# an SQS queue; the queue policy lets only those rules send; the consumer policy is what the
# server's role needs. Requires a CloudTrail trail that logs management events (write) in this
# Region: without one, EventBridge receives no "AWS API Call via CloudTrail" events.
# Give the queue_url output to the server as --events-queue-url (CLOUDMAP_MCP_EVENTS_QUEUE_URL).

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

locals {
  cloud_map_calls = [
    "RegisterInstance",
    "DeregisterInstance",
    "UpdateInstanceCustomHealthStatus",
    "CreateService",
    "DeleteService",
    "UpdateService",
    "UpdateServiceAttributes",
    "DeleteServiceAttributes",
    "CreateHttpNamespace",
    "CreatePrivateDnsNamespace",
    "CreatePublicDnsNamespace",
    "DeleteNamespace",
    "UpdateHttpNamespace",
    "UpdatePrivateDnsNamespace",
    "UpdatePublicDnsNamespace",
  ]
  rule_arns = concat(
    [aws_cloudwatch_event_rule.cloud_map_api_calls.arn],
    [for r in aws_cloudwatch_event_rule.ecs_task_state : r.arn],
  )
}

resource "aws_sqs_queue" "events" {
  name = var.queue_name
  # Events only say "re-read this service"; after an hour, polling has long caught up.
  message_retention_seconds  = 3600
  visibility_timeout_seconds = 60
  receive_wait_time_seconds  = 20
  # SSE-SQS works with EventBridge as it is (an AWS-managed KMS key would not).
  sqs_managed_sse_enabled = true
  tags                    = var.tags
}

resource "aws_cloudwatch_event_rule" "cloud_map_api_calls" {
  name           = "${var.queue_name}-cloudmap"
  description    = "Cloud Map write calls recorded by CloudTrail, for cloudmap-mcp"
  event_bus_name = "default"
  event_pattern = jsonencode({
    source      = ["aws.servicediscovery"]
    detail-type = ["AWS API Call via CloudTrail"]
    detail = {
      eventSource = ["servicediscovery.amazonaws.com"]
      eventName   = local.cloud_map_calls
    }
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_target" "cloud_map_api_calls" {
  rule      = aws_cloudwatch_event_rule.cloud_map_api_calls.name
  target_id = "cloudmap-mcp-queue"
  arn       = aws_sqs_queue.events.arn
}

resource "aws_cloudwatch_event_rule" "ecs_task_state" {
  count          = var.include_ecs_task_events ? 1 : 0
  name           = "${var.queue_name}-ecs"
  description    = "ECS task state changes, for cloudmap-mcp"
  event_bus_name = "default"
  event_pattern = jsonencode({
    source      = ["aws.ecs"]
    detail-type = ["ECS Task State Change"]
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_target" "ecs_task_state" {
  count     = var.include_ecs_task_events ? 1 : 0
  rule      = aws_cloudwatch_event_rule.ecs_task_state[0].name
  target_id = "cloudmap-mcp-queue"
  arn       = aws_sqs_queue.events.arn
}

data "aws_iam_policy_document" "queue" {
  statement {
    sid       = "AllowEventBridgeRules"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = local.rule_arns
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.queue.json
}

data "aws_iam_policy_document" "consumer" {
  statement {
    sid       = "ConsumeCloudMapEventsQueue"
    effect    = "Allow"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.events.arn]
  }
}

resource "aws_iam_policy" "consumer" {
  name        = "${var.queue_name}-consumer"
  description = "cloudmap-mcp reads and deletes the events of its queue"
  policy      = data.aws_iam_policy_document.consumer.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "consumer" {
  count      = var.server_role_name == "" ? 0 : 1
  role       = var.server_role_name
  policy_arn = aws_iam_policy.consumer.arn
}
