variable "project" {
  description = "GCP project of the pool and the service account."
  type        = string
}

variable "pool_id" {
  description = "Workload identity pool id (4-32 characters)."
  type        = string
  default     = "bqforward-aws"
}

variable "provider_id" {
  description = "Provider id inside the pool."
  type        = string
  default     = "aws"
}

variable "aws_account_id" {
  description = "AWS account whose task role may write to BigQuery."
  type        = string
}

variable "aws_partition" {
  description = "AWS partition of the account (aws, aws-cn, aws-us-gov)."
  type        = string
  default     = "aws"
}

variable "aws_role_name" {
  description = "Name (not ARN) of the IAM role the ECS tasks run as (the task role, not the execution role)."
  type        = string
}

variable "service_account_email" {
  description = "Service account the task role becomes (its BigQuery permissions apply)."
  type        = string
}

variable "service_account_name" {
  description = "Full resource name of that service account (projects/P/serviceAccounts/EMAIL)."
  type        = string
}
