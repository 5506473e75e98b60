# From an empty AWS account to rows in BigQuery (docs/deploy.md): an ECR repository for the
# image, the BigQuery dataset, table and insert-only service account, workload identity
# federation letting the ECS task role act as that account (no Google key anywhere), and the
# bqforward service behind an internal NLB in the region's default VPC.
# credentials = "key" is the fallback: a service-account key in Secrets Manager.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60"
    }
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "aws_region" {
  description = "AWS region of the service."
  type        = string
  default     = "us-east-1"
}

variable "gcp_project" {
  description = "GCP project for the dataset and service account."
  type        = string
}

variable "credentials" {
  description = "federation (workload identity federation from the task role, no key) or key (a service-account key in Secrets Manager)."
  type        = string
  default     = "federation"
  validation {
    condition     = contains(["federation", "key"], var.credentials)
    error_message = "credentials is federation or key."
  }
}

variable "image_tag" {
  description = "Tag of the bqforward image pushed to the ECR repository this creates."
  type        = string
  default     = "0.1.0"
}

provider "aws" {
  region = var.aws_region
}

provider "google" {
  project = var.gcp_project
}

data "aws_vpc" "default" {
  default = true
}

data "aws_subnets" "default" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default.id]
  }
  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

resource "aws_ecr_repository" "bqforward" {
  name                 = "bqforward"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

module "bigquery" {
  source  = "../../modules/bigquery"
  project = var.gcp_project
  # A first deployment you may want to destroy again; keep true for real data.
  deletion_protection = false
}

locals {
  name = "bqforward"
}

data "aws_caller_identity" "current" {}

module "federation" {
  count                 = var.credentials == "federation" ? 1 : 0
  source                = "../../modules/aws-federation"
  project               = var.gcp_project
  aws_account_id        = data.aws_caller_identity.current.account_id
  aws_role_name         = "${local.name}-task" # the aggregator module's task role
  service_account_email = module.bigquery.service_account_email
  service_account_name  = module.bigquery.service_account_name
}

# Fallback only. The key is created here for a one-command start, which puts it in Terraform
# state: keep the state encrypted and private, or create the key yourself and leave
# bigquery_key_json unset (docs/deploy.md, credentials).
resource "google_service_account_key" "bqforward" {
  count              = var.credentials == "key" ? 1 : 0
  service_account_id = module.bigquery.service_account_name
}

module "aggregator" {
  source                   = "../../modules/aggregator"
  name                     = local.name
  image                    = "${aws_ecr_repository.bqforward.repository_url}:${var.image_tag}"
  vpc_id                   = data.aws_vpc.default.id
  subnet_ids               = data.aws_subnets.default.ids
  allowed_cidrs            = [data.aws_vpc.default.cidr_block]
  bigquery_project         = module.bigquery.project
  bigquery_dataset         = module.bigquery.dataset_id
  bigquery_table           = module.bigquery.table_ids[0]
  google_credential_config = one(module.federation[*].credential_config)
  bigquery_key_json        = var.credentials == "key" ? base64decode(google_service_account_key.bqforward[0].private_key) : null
  # The default VPC has public subnets and no NAT: tasks reach Google and ECR through public IPs
  # (inbound is still only from the load balancer's security group).
  assign_public_ip    = true
  deletion_protection = false
}

output "ecr_repository" {
  description = "docker push here"
  value       = aws_ecr_repository.bqforward.repository_url
}

output "endpoint" {
  description = "Forward protocol endpoint (inside the VPC)"
  value       = module.aggregator.endpoint
}

output "bigquery_table" {
  description = "Where the rows land"
  value       = "${module.bigquery.project}.${module.bigquery.dataset_id}.${module.bigquery.table_ids[0]}"
}

output "google_principal" {
  description = "With federation: who may act as the service account (the task role's sessions)."
  value       = one(module.federation[*].principal)
}
