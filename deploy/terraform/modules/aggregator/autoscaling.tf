# Scale out on CPU (bqforward is CPU-bound when it keeps up) and on the events it receives per
# task (bqforward_input_events_total, shipped by the metrics sidecar), in whichever asks for
# more tasks. Forwarders keep their connections: new tasks get new and re-opened connections,
# so forwarders should recycle theirs (deploy/forwarders/).

resource "aws_appautoscaling_target" "bqforward" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.bqforward.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_tasks
  max_capacity       = var.max_tasks
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.bqforward.service_namespace
  resource_id        = aws_appautoscaling_target.bqforward.resource_id
  scalable_dimension = aws_appautoscaling_target.bqforward.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_cpu_percent
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "events" {
  name               = "${var.name}-events-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.bqforward.service_namespace
  resource_id        = aws_appautoscaling_target.bqforward.resource_id
  scalable_dimension = aws_appautoscaling_target.bqforward.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_events_per_task_per_minute
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    customized_metric_specification {
      namespace   = "bqforward"
      metric_name = "bqforward_input_events_total"
      statistic   = "Average"
      unit        = "None"
      dimensions {
        name  = "ClusterName"
        value = aws_ecs_cluster.this.name
      }
      dimensions {
        name  = "ServiceName"
        value = var.name
      }
    }
  }
}

# Not a scaling signal (more tasks do not help when BigQuery refuses): an alarm.
resource "aws_cloudwatch_metric_alarm" "buffer_filling" {
  alarm_name          = "${var.name}-buffer-filling"
  alarm_description   = "A bqforward task's file buffer is more than 80 % full: BigQuery is slow or refusing"
  namespace           = "bqforward"
  metric_name         = "fluentd_output_status_buffer_available_space_ratio"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 20
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  tags                = var.tags
  dimensions = {
    ClusterName = aws_ecs_cluster.this.name
    ServiceName = var.name
  }
}
