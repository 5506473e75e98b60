# The BigQuery side of bqforward: a dataset, day-partitioned tables, and a service account
# that may read those tables' schemas and insert rows into them, nothing else.

resource "google_bigquery_dataset" "logs" {
  project     = var.project
  dataset_id  = var.dataset_id
  location    = var.location
  description = "Logs streamed by bqforward"

  dynamic "default_encryption_configuration" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }
}

resource "google_bigquery_table" "logs" {
  #checkov:skip=CKV_GCP_121:Deletion protection is var.deletion_protection (default true); the example turns it off so a trial can be destroyed.
  for_each = var.tables

  project                  = var.project
  dataset_id               = google_bigquery_dataset.logs.dataset_id
  table_id                 = each.key
  schema                   = coalesce(each.value.schema, file("${path.module}/schema/events.json"))
  clustering               = each.value.clustering
  require_partition_filter = var.require_partition_filter
  deletion_protection      = var.deletion_protection

  time_partitioning {
    type          = "DAY"
    field         = "time"
    expiration_ms = each.value.partition_expiration_day == null ? null : each.value.partition_expiration_day * 86400000
  }

  dynamic "encryption_configuration" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      kms_key_name = encryption_configuration.value
    }
  }
}

resource "google_service_account" "bqforward" {
  project      = var.project
  account_id   = var.service_account_id
  display_name = "bqforward (streaming inserts)"
}

# tabledata.insertAll needs bigquery.tables.updateData; fetch_schema needs bigquery.tables.get.
# Granted per table: the account can neither read rows nor touch other tables.
resource "google_project_iam_custom_role" "insert_only" {
  project     = var.project
  role_id     = "bqforwardTableInsert"
  title       = "bqforward: insert rows"
  description = "Stream rows into a table and read its schema; no reads of data, no deletes."
  permissions = ["bigquery.tables.get", "bigquery.tables.updateData"]
}

resource "google_bigquery_table_iam_member" "insert" {
  for_each = google_bigquery_table.logs

  project    = var.project
  dataset_id = each.value.dataset_id
  table_id   = each.value.table_id
  role       = google_project_iam_custom_role.insert_only.id
  member     = "serviceAccount:${google_service_account.bqforward.email}"
}
