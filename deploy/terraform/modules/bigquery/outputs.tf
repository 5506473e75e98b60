output "project" {
  description = "BIGQUERY_PROJECT for bqforward."
  value       = var.project
}

output "dataset_id" {
  description = "BIGQUERY_DATASET for bqforward."
  value       = google_bigquery_dataset.logs.dataset_id
}

output "table_ids" {
  description = "Tables created (BIGQUERY_TABLE takes one of them)."
  value       = [for t in google_bigquery_table.logs : t.table_id]
}

output "service_account_email" {
  description = "The account bqforward authenticates as (key, or impersonation from GCP workloads)."
  value       = google_service_account.bqforward.email
}

output "service_account_name" {
  description = "Full resource name, for google_service_account_key or IAM bindings."
  value       = google_service_account.bqforward.name
}
