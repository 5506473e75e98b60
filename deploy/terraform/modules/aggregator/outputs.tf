output "endpoint" {
  description = "host:port forwarders send to (fluentd out_forward <server>, Fluent Bit forward output)."
  value       = "${aws_lb.forward.dns_name}:24224"
}

output "secret_arn" {
  description = "Secrets Manager secret holding the BigQuery key JSON (null with federation)."
  value       = one(aws_secretsmanager_secret.bigquery_key[*].arn)
}

output "task_role_name" {
  description = "The ECS task role: what workload identity federation binds to the service account."
  value       = aws_iam_role.task.name
}

output "cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service."
  value       = aws_ecs_service.bqforward.name
}

output "log_group" {
  description = "bqforward's own logs."
  value       = aws_cloudwatch_log_group.bqforward.name
}
