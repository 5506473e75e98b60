# bqforward as a fluentd aggregator service: Fargate tasks behind a Network Load Balancer,
# scaled on CPU and on the events bqforward counts, logs and metrics in CloudWatch, Google
# credentials by workload identity federation from the task role (or, as the fallback, a
# service-account key in Secrets Manager). Instances share nothing but BigQuery.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  region           = data.aws_region.current.name
  log_group        = "/ecs/${var.name}"
  metrics_group    = "/ecs/${var.name}/metrics"
  stop_timeout     = var.shutdown_timeout_seconds + 10
  forward_port     = 24224
  metrics_port     = 24231
  otel_config_yaml = file("${path.module}/../../../otel/collector.yaml")
  federated        = var.google_credential_config != null

  container_definitions = [
    {
      name        = "bqforward"
      image       = var.image
      essential   = true
      command     = ["run", "--shutdown-timeout", "${var.shutdown_timeout_seconds}s"]
      stopTimeout = local.stop_timeout
      portMappings = [
        { name = "forward", containerPort = local.forward_port, protocol = "tcp" },
        { name = "metrics", containerPort = local.metrics_port, protocol = "tcp" },
      ]
      # Federation: the credential configuration (no secret in it) in the environment, the
      # task role's own AWS credentials exchanged for Google tokens. Else the key's secret.
      environment = concat([
        { name = "BIGQUERY_PROJECT", value = var.bigquery_project },
        { name = "BIGQUERY_DATASET", value = var.bigquery_dataset },
        { name = "BIGQUERY_TABLE", value = var.bigquery_table },
        { name = "BQFORWARD_BUFFER_LIMIT", value = var.buffer_limit },
        ], local.federated ? [
        { name = "BIGQUERY_CREDENTIAL_CONFIG", value = var.google_credential_config },
      ] : [])
      secrets = [
        for arn in aws_secretsmanager_secret.bigquery_key[*].arn : { name = "BIGQUERY_JSON_KEY", valueFrom = arn }
      ]
      mountPoints = [
        { sourceVolume = "bqforward-buffer", containerPath = "/var/lib/bqforward", readOnly = false },
      ]
      readonlyRootFilesystem = true
      ulimits                = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      healthCheck = {
        command     = ["CMD", "bqforward", "health"]
        interval    = 10
        timeout     = 6
        retries     = 3
        startPeriod = 15
      }
      restartPolicy = { enabled = true, restartAttemptPeriod = 60 }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.bqforward.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "aggregator"
        }
      }
    },
    {
      name      = "metrics"
      image     = var.otel_collector_image
      essential = false
      environment = [
        { name = "AOT_CONFIG_CONTENT", value = local.otel_config_yaml },
        { name = "CLUSTER_NAME", value = aws_ecs_cluster.this.name },
        { name = "SERVICE_NAME", value = var.name },
        { name = "METRICS_LOG_GROUP", value = aws_cloudwatch_log_group.metrics.name },
      ]
      readonlyRootFilesystem = true
      dependsOn              = [{ containerName = "bqforward", condition = "START" }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.bqforward.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "metrics"
        }
      }
    },
  ]
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = var.tags

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_task_definition" "bqforward" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.container_definitions)
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = var.buffer_storage_gib
  }

  # Fargate task storage: lives as long as the task, survives container restarts.
  volume {
    name = "bqforward-buffer"
  }
}

resource "aws_ecs_service" "bqforward" {
  #checkov:skip=CKV_AWS_333:assign_public_ip defaults to false; only subnets without NAT (the example's default VPC) need it, and the tasks' security group admits only the load balancer.
  name                              = var.name
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.bqforward.arn
  desired_count                     = var.min_tasks
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 30
  propagate_tags                    = "SERVICE"
  enable_execute_command            = false
  tags                              = var.tags

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = var.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.forward.arn
    container_name   = "bqforward"
    container_port   = local.forward_port
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # Autoscaling owns the count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.forward]
}
