//! Answers the gateway writes itself (routing, auth and upstream failures): a JSON body, the
//! request id, and a `Content-Length`, since these bypass `response_filter`.

use crate::proxy::{RequestCtx, X_REQUEST_ID};
use bytes::Bytes;
use http::header::HeaderName;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// An error answer: `{"error": .., "reason": .. (when set), "message": .., "request_id": ..}`.
pub struct Answer<'a> {
    pub status: u16,
    /// A stable machine-readable code, e.g. `not_found`, `unauthorized`.
    pub error: &'a str,
    /// For auth refusals: the reason from the fixed set (`expired`, `signature`, ...).
    pub reason: Option<&'a str>,
    /// Fixed text for people; never echoes request data, tokens or keys.
    pub message: &'a str,
    /// For 403: the policy that denied.
    pub policy: Option<&'a str>,
    /// For 429: the limit that refused.
    pub limit: Option<&'a str>,
    pub headers: Vec<(HeaderName, String)>,
}

impl<'a> Answer<'a> {
    pub fn new(status: u16, error: &'a str, message: &'a str) -> Answer<'a> {
        Answer {
            status,
            error,
            reason: None,
            message,
            policy: None,
            limit: None,
            headers: Vec::new(),
        }
    }

    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.error.into());
        if let Some(r) = self.reason {
            body.insert("reason".into(), r.into());
        }
        if let Some(p) = self.policy {
            body.insert("policy".into(), p.into());
        }
        if let Some(l) = self.limit {
            body.insert("limit".into(), l.into());
        }
        body.insert("message".into(), self.message.into());
        body.insert("request_id".into(), request_id.into());
        serde_json::to_vec(&body).expect("a JSON object of strings serialises")
    }

    pub async fn send(self, session: &mut Session, ctx: &RequestCtx) -> Result<()> {
        let body = self.body(ctx.request_id().to_str().unwrap_or(""));
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(X_REQUEST_ID.clone(), ctx.request_id().clone())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        for (name, value) in self.headers {
            resp.insert_header(name, value)?;
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
}
