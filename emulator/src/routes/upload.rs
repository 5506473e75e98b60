// Owns the upload endpoint of jobs.insert (`/upload/bigquery/v2/projects/{p}/jobs`) and Google's
// two upload protocols on it: `uploadType=multipart` (one `multipart/related` request: the Job
// resource as JSON, then the data) and `uploadType=resumable` (a POST of the Job resource answered
// with the session URI in `Location`, then PUTs of the data; 308 until the last byte). Must not
// hold job rules (`jobs`) or session arithmetic (`uploads`).
//
// <https://cloud.google.com/bigquery/docs/reference/api-uploads>; what google-cloud-bigquery
// sends: `Client._do_multipart_upload` / `_initiate_resumable_upload` and google-resumable-media's
// `MultipartUpload` / `ResumableUpload`.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::jobs::{create, detached};
use super::params;
use super::tables::parse_json;
use super::{ApiBase, AppState};
use crate::error::ApiError;
use crate::insert::payload_too_large;
use crate::jobs::{self, random_token};
use crate::stats::Stats;
use crate::uploads::{ContentRange, Finished, Progress};

/// Room for the Job resource in a multipart body, beside the data.
const METADATA_LIMIT: usize = 1024 * 1024;

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit.saturating_add(1))
        .await
        .map_err(|_| payload_too_large(limit))
}

fn job_answer(app: &AppState, key: &str, base: &ApiBase) -> Result<Response, ApiError> {
    let value = app
        .store
        .job(key)
        .ok_or_else(|| ApiError::internal(format!("job {key} of a finished upload is gone")))?;
    let record = jobs::record_of(key, &value)?;
    Ok(Json(jobs::render(&record, &base.0)).into_response())
}

/// `POST …/jobs?uploadType=multipart|resumable`.
pub async fn start(
    State(app): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: ApiBase,
    body: Body,
) -> Result<Response, ApiError> {
    Stats::add(&app.stats.upload_requests, 1);
    let q = params::parse(query.as_deref(), &params::UPLOAD)?;
    match q.text("uploadType") {
        Some("multipart") => multipart(app, project, &headers, base, body).await,
        Some("resumable") => initiate(app, project, &headers, base, body).await,
        Some("media") | None => Err(ApiError::bad_request(
            "jobs.insert needs the Job resource with its data: use uploadType=multipart or uploadType=resumable",
        )),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid upload type \"{other}\": use multipart or resumable"
        ))),
    }
}

/// The boundary of a `multipart/related` (or other multipart) body.
fn boundary(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "uploadType=multipart needs Content-Type: multipart/related; boundary=…",
        )
    };
    let mime: mime::Mime = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    if mime.type_() != mime::MULTIPART {
        return Err(bad());
    }
    mime.get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_string())
        .ok_or_else(bad)
}

/// The two parts of a multipart upload: the Job resource (JSON) and the data.
async fn parts(body: Bytes, boundary: String) -> Result<(Bytes, Bytes), ApiError> {
    let bad = |e: multer::Error| ApiError::bad_request(format!("Invalid multipart body: {e}"));
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut next = async || -> Result<Option<Bytes>, ApiError> {
        match multipart.next_field().await.map_err(bad)? {
            Some(field) => Ok(Some(field.bytes().await.map_err(bad)?)),
            None => Ok(None),
        }
    };
    let (Some(metadata), Some(data)) = (next().await?, next().await?) else {
        return Err(ApiError::bad_request(
            "A multipart upload has two parts: the Job resource (JSON), then the data",
        ));
    };
    Ok((metadata, data))
}

async fn multipart(
    app: AppState,
    project: String,
    headers: &HeaderMap,
    base: ApiBase,
    body: Body,
) -> Result<Response, ApiError> {
    let boundary = boundary(headers)?;
    let limit = app.load_limits.max_bytes;
    let body = read_body(body, limit.saturating_add(METADATA_LIMIT)).await?;
    let (metadata, data) = parts(body, boundary).await?;
    if data.len() > limit {
        return Err(payload_too_large(limit));
    }
    let prepared = jobs::prepare(&app.store, &project, &parse_json(&metadata)?)?;
    let record = create(&app, prepared, data.to_vec()).await?;
    Ok(Json(jobs::render(&record, &base.0)).into_response())
}

/// Opens a resumable session: 200 with the session URI in `Location`. A job id that exists is
/// refused here already (409), before any data is sent.
async fn initiate(
    app: AppState,
    project: String,
    headers: &HeaderMap,
    base: ApiBase,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, METADATA_LIMIT).await?;
    let prepared = jobs::prepare(&app.store, &project, &parse_json(&body)?)?;
    if app.store.job(&prepared.key()).is_some() {
        Stats::add(&app.stats.jobs_duplicate, 1);
        return Err(jobs::duplicate(
            &prepared.project,
            &prepared.location,
            &prepared.job_id,
        ));
    }
    let expected = match headers.get("x-upload-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Invalid X-Upload-Content-Length"))?,
        ),
    };
    let limit = app.load_limits.max_bytes;
    if expected.is_some_and(|n| n > limit as u64) {
        return Err(payload_too_large(limit));
    }
    let upload_id = random_token(40);
    app.uploads.start(upload_id.clone(), prepared, expected);
    let session = format!(
        "{}/upload/bigquery/v2/projects/{project}/jobs?uploadType=resumable&upload_id={upload_id}",
        base.origin()
    );
    Ok((
        StatusCode::OK,
        [
            (LOCATION.as_str(), session),
            ("x-guploader-uploadid", upload_id),
            (CONTENT_LENGTH.as_str(), "0".to_string()),
        ],
    )
        .into_response())
}

/// `PUT <session URI>`: a chunk (`Content-Range: bytes S-E/T`, `T` may be `*`), the whole rest
/// (no `Content-Range`), or a status query (`bytes */T`, `bytes */*`, empty body).
pub async fn chunk(
    State(app): State<AppState>,
    Path(_project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: ApiBase,
    body: Body,
) -> Result<Response, ApiError> {
    Stats::add(&app.stats.upload_requests, 1);
    let q = params::parse(query.as_deref(), &params::UPLOAD)?;
    let Some(upload_id) = q.text("upload_id").map(str::to_string) else {
        return Err(ApiError::bad_request(
            "PUT is for resumable upload sessions: the URI needs the upload_id the session was opened with",
        ));
    };
    let range =
        match headers.get(CONTENT_RANGE) {
            None => None,
            Some(v) => {
                let text = v.to_str().unwrap_or_default();
                Some(ContentRange::parse(text).ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid Content-Range: {text}"))
                })?)
            }
        };
    let limit = app.load_limits.max_bytes;
    let body = read_body(body, limit).await?;
    let progress = app
        .uploads
        .put(&upload_id, range, &body, limit)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "notFound",
                format!("Not found: upload session {upload_id}"),
            )
        })?;
    match progress {
        Progress::Incomplete(received) => Ok(resume_incomplete(received)),
        Progress::Finished(Finished::Job(key)) => job_answer(&app, &key, &base),
        Progress::Finished(Finished::Refused(e)) => Err(e),
        Progress::Complete(prepared, data) => {
            // The session has handed its data over: the job is made and the session marked
            // finished even if this request is given up meanwhile, so a status query after a
            // lost answer finds the job (not a session that lost its bytes).
            let owned = app.clone();
            let key = detached(async move {
                match create(&owned, *prepared, data).await {
                    Ok(record) => {
                        let key = record.key();
                        owned.uploads.finish(&upload_id, Finished::Job(key.clone()));
                        Ok(key)
                    }
                    Err(e) => {
                        owned
                            .uploads
                            .finish(&upload_id, Finished::Refused(e.clone()));
                        Err(e)
                    }
                }
            })
            .await?;
            job_answer(&app, &key, &base)
        }
    }
}

/// 308 with `Range: bytes=0-LAST` (no `Range` while nothing has arrived).
fn resume_incomplete(received: u64) -> Response {
    let mut resp = (
        StatusCode::PERMANENT_REDIRECT,
        [(CONTENT_LENGTH, "0".to_string())],
    )
        .into_response();
    if received > 0
        && let Ok(v) = format!("bytes=0-{}", received - 1).parse()
    {
        resp.headers_mut().insert(RANGE, v);
    }
    resp
}
