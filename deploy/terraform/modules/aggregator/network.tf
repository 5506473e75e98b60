# The Network Load Balancer spreads forwarder connections over the tasks; it health-checks
# bqforward's /readyz, so a task whose buffer is nearly full gets no new connections.

resource "aws_lb" "forward" {
  #checkov:skip=CKV_AWS_91:NLB access logs record only TLS listeners' connections; bqforward's own logs and metrics cover the traffic.
  #checkov:skip=CKV_AWS_150:Deletion protection is var.deletion_protection (default true); the example turns it off so a trial can be destroyed.
  name                             = var.name
  load_balancer_type               = "network"
  internal                         = var.internal
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = var.tags
}

resource "aws_lb_target_group" "forward" {
  name                 = var.name
  port                 = local.forward_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = var.shutdown_timeout_seconds
  # Close a stopping task's connections when it leaves the group: forwarders reconnect to
  # another task and resend what was not acked.
  connection_termination = true
  tags                   = var.tags

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.metrics_port)
    path                = "/readyz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "forward" {
  load_balancer_arn = aws_lb.forward.arn
  port              = local.forward_port
  protocol          = var.certificate_arn == null ? "TCP" : "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.certificate_arn == null ? null : "ELBSecurityPolicy-TLS13-1-2-2021-06"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.forward.arn
  }
}

resource "aws_security_group" "nlb" {
  name        = "${var.name}-nlb"
  description = "Forward protocol from the allowed networks to the bqforward load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags

  ingress {
    description = "Forward protocol"
    from_port   = local.forward_port
    to_port     = local.forward_port
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    description = "To the tasks: Forward protocol and health checks"
    from_port   = local.forward_port
    to_port     = local.metrics_port
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "bqforward tasks: Forward protocol and readiness from the load balancer, HTTPS out"
  vpc_id      = var.vpc_id
  tags        = var.tags

  ingress {
    description     = "Forward protocol through the load balancer"
    from_port       = local.forward_port
    to_port         = local.forward_port
    protocol        = "tcp"
    security_groups = [aws_security_group.nlb.id]
  }

  ingress {
    description     = "/readyz health checks"
    from_port       = local.metrics_port
    to_port         = local.metrics_port
    protocol        = "tcp"
    security_groups = [aws_security_group.nlb.id]
  }

  #checkov:skip=CKV_AWS_382:BigQuery, Google OAuth, ECR, Secrets Manager and CloudWatch are HTTPS endpoints on public addresses; egress is limited to port 443.
  egress {
    description = "HTTPS: BigQuery, Google OAuth, ECR, Secrets Manager, CloudWatch"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}
