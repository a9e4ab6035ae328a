//! Answers the gateway writes itself (routing and upstream failures): a JSON body, the
//! request id, and a `Content-Length`, since these bypass `response_filter`.

use crate::proxy::{RequestCtx, X_REQUEST_ID};
use bytes::Bytes;
use http::header::HeaderName;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The JSON body of every error the gateway answers itself.
pub fn error_body(error: &str, message: &str, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": error,
        "message": message,
        "request_id": request_id,
    }))
    .expect("a JSON object of strings serialises")
}

pub async fn error(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    error: &str,
    message: &str,
) -> Result<()> {
    error_with(session, ctx, status, error, message, &[]).await
}

pub async fn error_with(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    error: &str,
    message: &str,
    headers: &[(HeaderName, String)],
) -> Result<()> {
    let body = error_body(error, message, ctx.request_id().to_str().unwrap_or(""));
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(X_REQUEST_ID.clone(), ctx.request_id().clone())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}
