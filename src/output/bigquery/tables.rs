//! A destination's schema and its existence: where the schema of a chunk's rows comes from
//! (inline, a file per rendered path, or tables.get, cached), and what a missing table or
//! dataset does (created when configured, once however many flush workers meet it; rows wait
//! otherwise). Shared by the BigQuery outputs.

use super::destination::TableKey;
use super::schema::Schema;
use super::service::{BigQueryClient, TableRef};
use crate::internal_events::bigquery as events;
use crate::metrics::SinkDetail;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after creating a table a 404 is taken for BigQuery catching up, not for absence.
const CREATED_GRACE: Duration = Duration::from_secs(300);

pub enum SchemaSource {
    None,
    Static(Arc<Schema>),
    /// `schema_path` with placeholders: each rendered path read once (as the plugin caches
    /// it per path).
    Files(Mutex<HashMap<String, Arc<Schema>>>),
    /// tables.get of `fetch_schema_table` (rendered) or the destination, cached per table
    /// for `expire`.
    Fetch {
        expire: Duration,
        cache: tokio::sync::Mutex<HashMap<String, (Arc<Schema>, Instant)>>,
    },
}

/// What `auto_create_table` creates besides the schema: partitioning and clustering.
pub struct AutoCreate {
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a delivery left rows for later, and how soon to try again.
pub struct Waiting {
    pub error: String,
    /// `None`: the buffer's backoff.
    pub after: Option<Duration>,
    /// An expected wait (a table being created), logged at debug, not as a failure.
    pub quiet: bool,
}

impl Waiting {
    pub fn backoff(error: String) -> Self {
        Self {
            error,
            after: None,
            quiet: false,
        }
    }
}

/// The schema source and the creation of tables and datasets, for one output.
pub struct Tables {
    pub id: String,
    pub schema: SchemaSource,
    pub auto_create: Option<AutoCreate>,
    /// `auto_create_dataset`: create a missing dataset (in `location`, when set).
    pub auto_create_dataset: bool,
    pub location: Option<String>,
    pub detail: Arc<SinkDetail>,
    created: Mutex<HashMap<String, Instant>>,
    /// One table or dataset creation at a time, so concurrent chunks for a missing table
    /// create it once and the others wait for it.
    creating: tokio::sync::Mutex<()>,
}

impl Tables {
    pub fn new(
        id: String,
        schema: SchemaSource,
        auto_create: Option<AutoCreate>,
        auto_create_dataset: bool,
        location: Option<String>,
        detail: Arc<SinkDetail>,
    ) -> Self {
        Self {
            id,
            schema,
            auto_create,
            auto_create_dataset,
            location,
            detail,
            created: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn schema_for(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
    ) -> Result<Option<Arc<Schema>>, String> {
        match &self.schema {
            SchemaSource::None => Ok(None),
            SchemaSource::Static(schema) => Ok(Some(Arc::clone(schema))),
            SchemaSource::Files(files) => {
                let Some(path) = &key.schema_path else {
                    return Ok(None);
                };
                if let Some(schema) = files.lock().ok().and_then(|f| f.get(path).cloned()) {
                    return Ok(Some(schema));
                }
                let path = path.clone();
                let schema = tokio::task::spawn_blocking(move || Schema::from_file(&path))
                    .await
                    .map_err(|e| e.to_string())??;
                let schema = Arc::new(schema);
                if let (Ok(mut files), Some(path)) = (files.lock(), &key.schema_path) {
                    files.insert(path.clone(), Arc::clone(&schema));
                }
                Ok(Some(schema))
            }
            SchemaSource::Fetch { expire, cache } => {
                let name = key
                    .schema_table
                    .clone()
                    .unwrap_or_else(|| key.base_table().to_owned());
                let mut cache = cache.lock().await;
                if let Some((schema, _)) = cache.get(&name).filter(|(_, at)| at.elapsed() < *expire)
                {
                    return Ok(Some(Arc::clone(schema)));
                }
                let table_ref = TableRef {
                    project: &key.project,
                    dataset: &key.dataset,
                    table: &name,
                };
                let fetched = client
                    .table_schema(&table_ref)
                    .await
                    .map_err(|f| f.to_string())
                    .and_then(|json| Schema::from_json(&json));
                match (fetched, cache.get(&name)) {
                    (Ok(schema), _) => {
                        let schema = Arc::new(schema);
                        cache.insert(name, (Arc::clone(&schema), Instant::now()));
                        Ok(Some(schema))
                    }
                    // As the plugin: keep the previous schema when a refresh fails.
                    (Err(err), Some((old, _))) => {
                        tracing::warn!(output = %self.id, table = %name, error = %err, "schema refresh failed; using the cached schema");
                        Ok(Some(Arc::clone(old)))
                    }
                    (Err(err), None) => Err(format!("fetch_schema for {name}: {err}")),
                }
            }
        }
    }

    /// A missing table: create it if configured (then wait), or wait briefly if it was just
    /// created. `None`: dead-letter the rows. Creating a table is an expected step, not a
    /// failure: its waits are quiet, and "created table" is logged once.
    pub async fn on_not_found(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        schema: Option<&Schema>,
        error: &str,
    ) -> Option<Waiting> {
        let name = key.to_string();
        let wait = |secs| Waiting {
            error: format!("waiting for table {name} (created by auto_create_table)"),
            after: Some(Duration::from_secs(secs)),
            quiet: true,
        };
        if self.recently_created(&name) {
            return Some(wait(2));
        }
        let auto = self.auto_create.as_ref()?;
        let Some(schema) = schema else {
            return Some(Waiting::backoff(format!(
                "{error}; auto_create_table has no schema for {name}"
            )));
        };
        let _creating = self.creating.lock().await;
        if self.recently_created(&name) {
            return Some(wait(1));
        }
        let mut resource = auto.extra.clone();
        resource.insert(
            "tableReference".into(),
            serde_json::json!({"projectId": key.project, "datasetId": key.dataset, "tableId": key.base_table()}),
        );
        resource.insert("schema".into(), schema.to_json());
        match client
            .create_table(serde_json::Value::Object(resource))
            .await
        {
            Ok(()) => {
                events::TableCreated {
                    output: &self.id,
                    table: &name,
                }
                .emit(&self.detail);
                if let Ok(mut created) = self.created.lock() {
                    created.insert(name.clone(), Instant::now());
                }
                Some(wait(1))
            }
            Err(failure) => {
                tracing::warn!(output = %self.id, table = %name, error = %failure, "could not create table; will retry");
                Some(Waiting {
                    error: format!("creating table {name}: {failure}"),
                    after: Some(Duration::from_secs(5)),
                    quiet: false,
                })
            }
        }
    }

    /// Drops the cached schema of `key`'s table (`fetch_schema`), so the next chunk reads it
    /// again: the Storage Write API said the table's schema changed.
    pub async fn forget_schema(&self, key: &TableKey) {
        if let SchemaSource::Fetch { cache, .. } = &self.schema {
            let name = key
                .schema_table
                .clone()
                .unwrap_or_else(|| key.base_table().to_owned());
            cache.lock().await.remove(&name);
        }
    }

    fn recently_created(&self, name: &str) -> bool {
        self.created
            .lock()
            .ok()
            .and_then(|c| c.get(name).copied())
            .is_some_and(|at| at.elapsed() < CREATED_GRACE)
    }

    /// A missing dataset is a deployment problem, not the rows': they wait (with the
    /// buffer's backoff) until it exists, and `/readyz` reports it. With
    /// `auto_create_dataset`, it is created.
    pub async fn on_dataset_missing(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        error: String,
    ) -> Waiting {
        let dataset = format!("{}.{}", key.project, key.dataset);
        if self.auto_create_dataset {
            let _creating = self.creating.lock().await;
            let name = format!("dataset {dataset}");
            if self.recently_created(&name) {
                return Waiting {
                    error: format!("waiting for {name} (created by auto_create_dataset)"),
                    after: Some(Duration::from_secs(1)),
                    quiet: true,
                };
            }
            match client
                .create_dataset(&key.project, &key.dataset, self.location.as_deref())
                .await
            {
                Ok(()) => {
                    tracing::info!(output = %self.id, %dataset, "created dataset (auto_create_dataset)");
                    if let Ok(mut created) = self.created.lock() {
                        created.insert(name, Instant::now());
                    }
                    return Waiting {
                        error: format!("dataset {dataset} created"),
                        after: Some(Duration::ZERO),
                        quiet: true,
                    };
                }
                Err(failure) => {
                    tracing::error!(output = %self.id, %dataset, error = %failure, "could not create dataset; rows wait");
                }
            }
        }
        events::DatasetMissing {
            output: &self.id,
            dataset: &dataset,
            error: &error,
        }
        .emit(&self.detail);
        Waiting::backoff(format!("dataset {dataset} not found: {error}"))
    }

    pub fn dataset_found(&self, key: &TableKey) {
        if self.detail.missing_datasets().is_empty() {
            return;
        }
        events::DatasetFound {
            output: &self.id,
            dataset: &format!("{}.{}", key.project, key.dataset),
        }
        .emit(&self.detail);
    }
}
