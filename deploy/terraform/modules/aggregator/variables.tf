variable "name" {
  description = "Name of the cluster, service, load balancer and their companions."
  type        = string
  default     = "bqforward"
}

variable "image" {
  description = "bqforward image (this repository's Dockerfile), e.g. <account>.dkr.ecr.<region>.amazonaws.com/bqforward:0.1.0."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the tasks and the load balancer."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the tasks and the load balancer (one per availability zone). The tasks need a route to Google (NAT, or public IPs)."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give tasks public IPs: only for subnets without NAT (e.g. a default VPC)."
  type        = bool
  default     = false
}

variable "internal" {
  description = "Keep the Network Load Balancer inside the VPC (forwarders in the VPC or peered networks)."
  type        = bool
  default     = true
}

variable "allowed_cidrs" {
  description = "Networks whose forwarders may connect on 24224."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate: the NLB then terminates TLS on 24224 (forwarders use `transport tls`). Null: plain TCP."
  type        = string
  default     = null
}

variable "bigquery_project" {
  description = "BIGQUERY_PROJECT."
  type        = string
}

variable "bigquery_dataset" {
  description = "BIGQUERY_DATASET."
  type        = string
  default     = "logs"
}

variable "bigquery_table" {
  description = "BIGQUERY_TABLE (it must exist: bqforward fetches its schema)."
  type        = string
  default     = "events"
}

variable "google_credential_config" {
  description = "Workload identity federation: the credential configuration JSON (module aws-federation's credential_config), given to bqforward as BIGQUERY_CREDENTIAL_CONFIG. Null: the fallback, a service-account key in Secrets Manager."
  type        = string
  default     = null
}

variable "bigquery_key_json" {
  description = "Without federation only: service-account key JSON to store in the secret. Null: put it there yourself (aws secretsmanager put-secret-value), so it never enters Terraform state."
  type        = string
  default     = null
  sensitive   = true
}

variable "cpu" {
  description = "Task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
}

variable "memory" {
  description = "Task memory, MiB."
  type        = number
  default     = 2048
}

variable "buffer_storage_gib" {
  description = "Fargate ephemeral storage per task (21-200 GiB) for the file buffer."
  type        = number
  default     = 50
}

variable "buffer_limit" {
  description = "total_limit_size of bqforward's file buffer; keep it below buffer_storage_gib."
  type        = string
  default     = "40g"
}

variable "shutdown_timeout_seconds" {
  description = "bqforward --shutdown-timeout; the container's stopTimeout is this plus 10 s (Fargate allows 120 s)."
  type        = number
  default     = 20
}

variable "min_tasks" {
  description = "Fewest tasks (at least 2 for one per availability zone)."
  type        = number
  default     = 2
}

variable "max_tasks" {
  description = "Most tasks autoscaling may run."
  type        = number
  default     = 10
}

variable "target_cpu_percent" {
  description = "Average CPU the service scales to."
  type        = number
  default     = 60
}

variable "target_events_per_task_per_minute" {
  description = "Average bqforward_input_events_total per task per minute the service scales to: set it from a load test of your events at the task size."
  type        = number
  default     = 1200000
}

variable "log_retention_days" {
  description = "Retention of bqforward's own logs and its metrics log group."
  type        = number
  default     = 365
}

variable "otel_collector_image" {
  description = "AWS Distro for OpenTelemetry collector that ships the metrics to CloudWatch."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.40.0"
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
