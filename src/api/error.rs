//! The API's error answer and its extractors: every refusal is an [`ApiError`], rendered
//! as `{"error": message, "code": status}`; [`Authorized`] is the bearer check of the
//! mutating endpoints, and [`ApiJson`] / [`ApiQuery`] turn a malformed body or query into
//! an `ApiError` instead of axum's plain-text rejection.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::App;
use crate::store::StoreError;

/// An error answer: a 4xx or 5xx status and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.message, "code": self.status.as_u16()}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            // SQLSTATE class 22 (data exception): the request's data, not the database, is at fault.
            StoreError::Db { source: sqlx::Error::Database(ref d), .. }
                if d.code().is_some_and(|c| c.starts_with("22")) =>
            {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("PostgreSQL cannot store this value: {e}"))
            }
            other => ApiError::unavailable(format!("database unavailable: {other}")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(r.status(), format!("invalid request body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

/// Proof that a request carries `Authorization: Bearer <token>` with the configured
/// token (compared in constant time). Without a configured token mutating endpoints are
/// refused (403); a missing or wrong token is a 401.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<App> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Authorized, ApiError> {
        let Some(token) = &app.token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutating endpoints are disabled: start owsyncd with --api-token-file",
            ));
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let (a, b) = (given.as_bytes(), token.as_bytes());
        let diff =
            a.len() ^ b.len() | a.iter().zip(b.iter().cycle()).fold(0usize, |acc, (x, y)| acc | usize::from(x ^ y));
        if b.is_empty() || diff != 0 {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
        }
        Ok(Authorized)
    }
}

/// A JSON body; a malformed one is a 400, one of the wrong shape a 422, a too large one
/// a 413 (axum's classification), each as an [`ApiError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// A query string; a malformed one is a 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiQuery<T>, ApiError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}
