# Workload identity federation from AWS to Google Cloud: the ECS task role's own AWS
# credentials are exchanged for a token of the BigQuery service account, so no Google key is
# stored anywhere. A pool with an AWS provider trusting one AWS account, the task role (and
# only it) allowed to impersonate the service account, and the credential configuration file
# bqforward reads (as `gcloud iam workload-identity-pools create-cred-config --aws` writes it).

data "google_project" "this" {
  project_id = var.project
}

locals {
  pool_name = "projects/${data.google_project.this.number}/locations/global/workloadIdentityPools/${var.pool_id}"
  audience  = "//iam.googleapis.com/${local.pool_name}/providers/${var.provider_id}"
  # What the provider's attribute mapping makes of a task's identity
  # (arn:aws:sts::ACCOUNT:assumed-role/ROLE/TASK_ID): the role without the session.
  aws_role = "arn:${var.aws_partition}:sts::${var.aws_account_id}:assumed-role/${var.aws_role_name}"

  credential_config = {
    universe_domain                   = "googleapis.com"
    type                              = "external_account"
    audience                          = local.audience
    subject_token_type                = "urn:ietf:params:aws:token-type:aws4_request" # checkov:skip=CKV_SECRET_6:A token type URN, not a secret.
    token_url                         = "https://sts.googleapis.com/v1/token"
    service_account_impersonation_url = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/${var.service_account_email}:generateAccessToken"
    credential_source = {
      environment_id = "aws1"
      # On ECS, bqforward takes the task role from the container credentials endpoint and the
      # region from AWS_REGION; these metadata URLs serve EC2 instances.
      region_url                     = "http://169.254.169.254/latest/meta-data/placement/availability-zone"
      url                            = "http://169.254.169.254/latest/meta-data/iam/security-credentials"
      regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
      imdsv2_session_token_url       = "http://169.254.169.254/latest/api/token"
    }
  }
}

resource "google_iam_workload_identity_pool" "aws" {
  project                   = var.project
  workload_identity_pool_id = var.pool_id
  display_name              = "bqforward on AWS"
  description               = "AWS workloads that write to BigQuery through bqforward"
}

resource "google_iam_workload_identity_pool_provider" "aws" {
  #checkov:skip=CKV_GCP_125:A check of GitHub Actions OIDC providers; this is an AWS provider, limited by attribute_condition to one role of one account.
  project                            = var.project
  workload_identity_pool_id          = google_iam_workload_identity_pool.aws.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = "AWS ${var.aws_account_id}"

  # Google's default mapping for AWS: attribute.aws_role is the role of an assumed-role ARN.
  attribute_mapping = {
    "google.subject"     = "assertion.arn"
    "attribute.aws_role" = "assertion.arn.contains('assumed-role') ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/' + assertion.arn.extract('assumed-role/{role_name}/') : assertion.arn"
  }
  # Only the task role's sessions get a token at all (the binding below is the second gate).
  attribute_condition = "attribute.aws_role == '${local.aws_role}'"

  aws {
    account_id = var.aws_account_id
  }
}

resource "google_service_account_iam_member" "task_role" {
  service_account_id = var.service_account_name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${local.pool_name}/attribute.aws_role/${local.aws_role}"
}
