variable "queue_name" {
  description = "Name of the SQS queue (also the prefix of the rules and the policy)."
  type        = string
  default     = "cloudmap-mcp-events"
}

variable "include_ecs_task_events" {
  description = "Also send ECS \"ECS Task State Change\" events (the Cloud Map API-call events are enough on their own)."
  type        = bool
  default     = false
}

variable "server_role_name" {
  description = "IAM role the server runs as (IRSA or EKS Pod Identity); the consumer policy is attached to it when set."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags for the queue, rules and policy."
  type        = map(string)
  default     = {}
}
