output "credential_config" {
  description = "The credential configuration JSON (no secret in it): bqforward's BIGQUERY_CREDENTIAL_CONFIG, or a file for GOOGLE_APPLICATION_CREDENTIALS."
  value       = jsonencode(local.credential_config)
}

output "audience" {
  description = "The provider's audience (//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER)."
  value       = local.audience
}

output "principal" {
  description = "The principal set granted roles/iam.workloadIdentityUser on the service account."
  value       = google_service_account_iam_member.task_role.member
}
