variable "project" {
  description = "GCP project that holds the dataset and the service account."
  type        = string
}

variable "location" {
  description = "BigQuery location of the dataset (US, EU or a region)."
  type        = string
  default     = "US"
}

variable "dataset_id" {
  description = "Dataset bqforward writes to (BIGQUERY_DATASET)."
  type        = string
  default     = "logs"
}

variable "tables" {
  description = <<-EOT
    Tables bqforward writes to, by name (BIGQUERY_TABLE, or what its `table` template yields).
    Each is partitioned by day on `time` and clustered on `tag`. `schema` is BigQuery's JSON
    schema; null takes schema/events.json (time, tag, aggregator, log and the fields of
    Docker's fluentd log driver). bqforward fetches the schema from the table.
  EOT
  type = map(object({
    schema                   = optional(string)
    partition_expiration_day = optional(number)
    clustering               = optional(list(string), ["tag"])
  }))
  default = { events = {} }
}

variable "require_partition_filter" {
  description = "Make queries name a time range (cheaper scans)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse to destroy the tables (and their rows) through Terraform."
  type        = bool
  default     = true
}

variable "kms_key_name" {
  description = "Cloud KMS key for the dataset and tables (CMEK); null keeps Google-managed encryption."
  type        = string
  default     = null
}

variable "service_account_id" {
  description = "Account id of the service account bqforward authenticates as."
  type        = string
  default     = "bqforward"
}
