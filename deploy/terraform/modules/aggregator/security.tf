# The BigQuery key's secret (only without federation), the KMS key that encrypts it and the
# log groups, and the two task roles. With federation the task role is what Google trusts
# (deploy/terraform/modules/aws-federation binds it to the service account).

resource "aws_kms_key" "this" {
  description         = "${var.name}: BigQuery key secret and log groups"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
  tags                = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's resource is always the key itself ("*" means this key); the account root keeps administration as AWS recommends.
  #checkov:skip=CKV_AWS_111:As above: "*" in a key policy is the key itself.
  #checkov:skip=CKV_AWS_356:As above: "*" in a key policy is the key itself.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${local.region}:${data.aws_caller_identity.current.account_id}:log-group:${local.log_group}*"]
    }
  }
}

resource "aws_secretsmanager_secret" "bigquery_key" {
  count = local.federated ? 0 : 1
  #checkov:skip=CKV2_AWS_57:A Google service-account key cannot be rotated by Secrets Manager; rotate it by creating a new key and putting it here (README, Deploy).
  name        = "${var.name}/bigquery-key"
  description = "Google service-account key JSON bqforward inserts with (BIGQUERY_JSON_KEY)"
  kms_key_id  = aws_kms_key.this.arn
  tags        = var.tags
}

resource "aws_secretsmanager_secret_version" "bigquery_key" {
  count         = !local.federated && var.bigquery_key_json != null ? 1 : 0
  secret_id     = aws_secretsmanager_secret.bigquery_key[0].id
  secret_string = var.bigquery_key_json
}

resource "aws_cloudwatch_log_group" "bqforward" {
  name              = local.log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "metrics" {
  name              = local.metrics_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

# Execution role: pull the image, write the awslogs streams, read the key into the container.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution" {
  count = local.federated ? 0 : 1
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.bigquery_key[0].arn]
  }
  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  count  = local.federated ? 0 : 1
  name   = "bigquery-key"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution[0].json
}

# Task role: the metrics sidecar writes embedded metric format logs; with federation, bqforward
# signs GetCallerIdentity with it (no AWS permission needed: Google verifies the signature).
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.metrics.arn}:*"]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "metrics"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}
