output "queue_url" {
  description = "--events-queue-url (CLOUDMAP_MCP_EVENTS_QUEUE_URL)"
  value       = aws_sqs_queue.events.url
}

output "queue_arn" {
  value = aws_sqs_queue.events.arn
}

output "consumer_policy_arn" {
  description = "Attach to the server's role (done already when server_role_name is set)"
  value       = aws_iam_policy.consumer.arn
}
