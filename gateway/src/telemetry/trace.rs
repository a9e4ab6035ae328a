//! OpenTelemetry tracing (`logging.tracing`): each request's place in a trace, and the
//! export of sampled requests' spans over OTLP/HTTP (protobuf), off the request path.
//!
//! A request records plain timestamps as it goes (its steps on its own task through
//! [`crate::util::span`], its upstream attempts in its context); only when it ends, and only
//! when it is sampled, are its spans built, straight into `opentelemetry-proto`'s OTLP
//! messages, and handed to a bounded queue: a full queue drops them and counts
//! (`tollgate_trace_spans_total{result="dropped"}`), so neither a slow nor a stopped
//! collector ever holds a request. One task on the background runtime batches and posts
//! them. Ids and the ratio sampler are the `opentelemetry` crates'; the SDK's tracer and
//! batch processor are not used: the tracer allocates a context per request whether sampled
//! or not, and the processor keeps its count of dropped spans to itself.
//!
//! Sampling is parent-based: a continued trace follows its parent's sampled flag; a new one
//! is sampled by `sample_ratio` on its trace id (the SDK's `TraceIdRatioBased`), so every
//! instance of a fleet decides alike. A `traceparent` is continued only from the clients
//! `continue_from` trusts; from others it is replaced, never forwarded.

use crate::telemetry::metrics::METRICS;
use crate::util::digest::{hex, hex_into};
use crate::util::span::{Step, Value};
use arc_swap::ArcSwapOption;
use once_cell::sync::OnceCell;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tollgate_config::{ContinueFrom, Tracing};

/// The settings in force (the last config loaded).
static SETTINGS: ArcSwapOption<Tracing> = ArcSwapOption::const_empty();

/// The export queue, once the exporter runs.
static QUEUE: OnceCell<mpsc::Sender<Vec<otlp::Span>>> = OnceCell::new();

/// Takes the settings of a newly loaded config (`None`: tracing off).
pub fn configure(settings: Option<&Tracing>) {
    SETTINGS.store(settings.cloned().map(Arc::new));
}

/// The settings in force, when tracing is on.
pub fn settings() -> Option<Arc<Tracing>> {
    SETTINGS.load_full()
}

/// A request's place in a trace.
#[derive(Debug)]
pub struct Trace {
    pub trace_id: TraceId,
    /// The request's server span.
    pub span_id: SpanId,
    /// The client's span, when its `traceparent` was continued.
    parent: Option<SpanId>,
    pub sampled: bool,
    /// The continued `tracestate`, passed on unchanged.
    tracestate: Option<String>,
    /// The client sent a `tracestate` (to remove from the upstream copy when not continued).
    client_tracestate: bool,
    start: SystemTime,
    steps: Vec<Step>,
    attempts: Vec<Attempt>,
}

/// One upstream attempt: a client span.
#[derive(Debug)]
struct Attempt {
    span_id: SpanId,
    start: SystemTime,
    end: Option<SystemTime>,
    upstream: String,
    backend: String,
    error: Option<&'static str>,
}

/// What the server span says when the request ends.
pub struct Finish<'a> {
    /// `METHOD route`.
    pub name: String,
    pub status: u16,
    pub attributes: Vec<(&'a str, Value)>,
}

impl Trace {
    /// The trace of a request that came with these headers, from a client `continue_from`
    /// trusts (`trusted`: the client is one of `trusted_proxies`).
    pub fn begin(
        settings: &Tracing,
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
        trusted: bool,
    ) -> Trace {
        let continued = match settings.continue_from {
            ContinueFrom::Any => true,
            ContinueFrom::TrustedProxies => trusted,
            ContinueFrom::None => false,
        };
        let parent = traceparent
            .filter(|_| continued)
            .and_then(parse_traceparent);
        let (trace_id, parent_span, sampled) = match parent {
            Some((trace_id, span, sampled)) => (trace_id, Some(span), sampled),
            None => {
                let trace_id = TraceId::from_bytes(fastrand::u128(1..).to_be_bytes());
                let decision = Sampler::TraceIdRatioBased(settings.sample_ratio)
                    .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
                    .decision;
                (
                    trace_id,
                    None,
                    decision == SamplingDecision::RecordAndSample,
                )
            }
        };
        Trace {
            trace_id,
            span_id: new_span_id(),
            parent: parent_span,
            sampled,
            tracestate: parent_span
                .and(tracestate)
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| v.len() <= 512 && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .map(str::to_owned),
            client_tracestate: tracestate.is_some(),
            // Only a sampled request's times are ever read.
            start: if sampled {
                SystemTime::now()
            } else {
                UNIX_EPOCH
            },
            steps: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// The trace id as the access log and headers write it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id.to_bytes())
    }

    /// `traceparent` naming `span` as the parent (W3C Trace Context, version 00), written
    /// in place: every request with tracing on sends one upstream.
    pub fn traceparent(&self, span: SpanId) -> http::HeaderValue {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id.to_bytes(), &mut out[3..35]);
        hex_into(&span.to_bytes(), &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        http::HeaderValue::from_bytes(&out).expect("hex digits and dashes")
    }

    /// The continued `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Whether the client sent a `tracestate`.
    pub fn client_sent_tracestate(&self) -> bool {
        self.client_tracestate
    }

    /// Adds the steps recorded while the request was decided.
    pub fn add_steps(&mut self, steps: Vec<Step>) {
        self.steps.extend(steps);
    }

    /// An upstream attempt starts (the previous one, if open, ended unanswered); its span
    /// id, the parent the upstream is told of.
    pub fn attempt_started(&mut self, upstream: &str, backend: &str) -> SpanId {
        self.attempt_ended(Some("retried"));
        let span_id = new_span_id();
        if self.sampled {
            self.attempts.push(Attempt {
                span_id,
                start: SystemTime::now(),
                end: None,
                upstream: upstream.to_owned(),
                backend: backend.to_owned(),
                error: None,
            });
        }
        span_id
    }

    /// The current attempt's span id, if one started.
    pub fn attempt_span(&self) -> Option<SpanId> {
        self.attempts.last().map(|a| a.span_id)
    }

    /// The current attempt ended: with its answer (`None`), or an error.
    pub fn attempt_ended(&mut self, error: Option<&'static str>) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.end = Some(SystemTime::now());
            a.error = error;
        }
    }

    /// The request ended: a sampled one's spans go to the export queue.
    pub fn finish(mut self, end: Finish<'_>) {
        if !self.sampled {
            return;
        }
        let now = SystemTime::now();
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.end = Some(now);
        }
        let trace_id = self.trace_id.to_bytes().to_vec();
        let server_id = self.span_id.to_bytes().to_vec();
        let mut spans = Vec::with_capacity(1 + self.steps.len() + self.attempts.len());
        let mut attributes: Vec<KeyValue> = end
            .attributes
            .into_iter()
            .map(|(k, v)| attribute(k, v))
            .collect();
        attributes.push(attribute(
            "http.response.status_code",
            Value::Int(i64::from(end.status)),
        ));
        spans.push(otlp::Span {
            trace_id: trace_id.clone(),
            span_id: server_id.clone(),
            trace_state: self.tracestate.take().unwrap_or_default(),
            parent_span_id: self
                .parent
                .map(|p| p.to_bytes().to_vec())
                .unwrap_or_default(),
            // W3C flags, and that the parent (if any) is remote.
            flags: 0x01 | 0x100 | if self.parent.is_some() { 0x200 } else { 0 },
            name: end.name,
            kind: otlp::span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(now),
            attributes,
            status: Some(status(end.status >= 500)),
            ..Default::default()
        });
        for step in self.steps {
            spans.push(otlp::Span {
                trace_id: trace_id.clone(),
                span_id: new_span_id().to_bytes().to_vec(),
                parent_span_id: server_id.clone(),
                flags: 0x01 | 0x100,
                name: step.name.to_owned(),
                kind: if step.client {
                    otlp::span::SpanKind::Client
                } else {
                    otlp::span::SpanKind::Internal
                } as i32,
                start_time_unix_nano: nanos(step.start),
                end_time_unix_nano: nanos(step.end),
                attributes: step
                    .attributes
                    .into_iter()
                    .map(|(k, v)| attribute(k, v))
                    .collect(),
                status: Some(status(step.failed)),
                ..Default::default()
            });
        }
        for (i, a) in self.attempts.into_iter().enumerate() {
            let mut attributes = vec![
                attribute("tollgate.upstream", Value::Str(a.upstream)),
                attribute("server.address", Value::Str(a.backend)),
                attribute("tollgate.attempt", Value::Int(i as i64 + 1)),
            ];
            if let Some(e) = a.error {
                attributes.push(attribute("error.type", Value::Str(e.to_owned())));
            }
            spans.push(otlp::Span {
                trace_id: trace_id.clone(),
                span_id: a.span_id.to_bytes().to_vec(),
                parent_span_id: server_id.clone(),
                flags: 0x01 | 0x100,
                name: "upstream".to_owned(),
                kind: otlp::span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(a.start),
                end_time_unix_nano: nanos(a.end.unwrap_or(now)),
                attributes,
                status: Some(status(a.error.is_some())),
                ..Default::default()
            });
        }
        enqueue(spans);
    }
}

/// Hands a request's spans to the exporter, or drops and counts them when its queue is
/// full (or no exporter runs).
fn enqueue(spans: Vec<otlp::Span>) {
    let n = spans.len() as u64;
    let sent = QUEUE.get().is_some_and(|q| q.try_send(spans).is_ok());
    if !sent {
        METRICS
            .trace_spans
            .with_label_values(&["dropped"])
            .inc_by(n);
    }
}

/// Starts the exporter on the current (background) runtime, once, with a queue of
/// `queue_size` requests' spans (the size read at start, 4096 when tracing is off then;
/// later reloads keep it). It idles while tracing is off.
pub fn start_exporter() {
    let size = settings().map_or(4096, |s| s.queue_size);
    let (tx, rx) = mpsc::channel(size);
    if QUEUE.set(tx).is_ok() {
        tokio::spawn(export(rx));
    }
}

async fn export(mut rx: mpsc::Receiver<Vec<otlp::Span>>) {
    let connector = pingora_core::connectors::http::Connector::new(None);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let Some(settings) = settings() else {
            // Tracing was turned off by a reload: what was queued goes nowhere.
            METRICS
                .trace_spans
                .with_label_values(&["dropped"])
                .inc_by(first.len() as u64);
            continue;
        };
        let mut batch = first;
        let deadline = tokio::time::Instant::now() + settings.batch_delay;
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                _ => break,
            }
        }
        let n = batch.len() as u64;
        let body = prost::Message::encode_to_vec(&request(&settings, batch));
        let call = crate::util::outbound::call(
            &connector,
            crate::util::outbound::Call {
                method: "POST",
                uri: &settings.endpoint,
                headers: &[("content-type", b"application/x-protobuf")],
                body: Some(body),
                ca: None,
                max_body: 64 * 1024,
                pool: true,
                truncate: true,
            },
        );
        let outcome = match tokio::time::timeout(settings.timeout, call).await {
            Ok(Ok((resp, _))) if resp.status.is_success() => Ok(()),
            Ok(Ok((resp, _))) => Err(format!("the collector answered {}", resp.status)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
        };
        let result = if outcome.is_ok() {
            "exported"
        } else {
            "failed"
        };
        METRICS.trace_spans.with_label_values(&[result]).inc_by(n);
        match outcome {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("trace export works again");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, spans = n, "trace export failed; spans are dropped until it works");
            }
            _ => {}
        }
    }
}

/// One OTLP export request: the gateway as resource and scope, then the spans.
fn request(settings: &Tracing, spans: Vec<otlp::Span>) -> ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", Value::Str(settings.service_name.clone())),
                    attribute("service.version", Value::Str(version.to_owned())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tollgate".to_owned(),
                    version: version.to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(match value {
                Value::Str(s) => any_value::Value::StringValue(s),
                Value::Int(n) => any_value::Value::IntValue(n),
            }),
        }),
        ..Default::default()
    }
}

fn status(failed: bool) -> otlp::Status {
    otlp::Status {
        code: if failed {
            otlp::status::StatusCode::Error
        } else {
            otlp::status::StatusCode::Unset
        } as i32,
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

fn new_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

/// A `traceparent` (W3C Trace Context §3.2): version, trace id, parent id and flags in
/// lowercase hex, neither id all zeros; version `ff` is invalid, and a later version may
/// append fields after a `-`. The trace id, the parent span and whether it was sampled.
fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    // Bytes, not text: a header value may hold any byte above 0x7f, and slicing a string
    // inside a character would panic.
    let v = value.trim_ascii();
    if !v.is_ascii() || v.len() < 55 {
        return None;
    }
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let version = &v[..2];
    if !lower_hex(version) || version == b"ff" {
        return None;
    }
    if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    // ASCII hex digits, checked above.
    let (trace, span, flags) = (
        std::str::from_utf8(trace).ok()?,
        std::str::from_utf8(span).ok()?,
        std::str::from_utf8(flags).ok()?,
    );
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace_id, span_id, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ratio: f64, continue_from: ContinueFrom) -> Tracing {
        Tracing {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sample_ratio: ratio,
            continue_from,
            service_name: "tollgate".into(),
            queue_size: 16,
            batch_size: 16,
            batch_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    const PARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read_strictly() {
        let (t, s, sampled) = parse_traceparent(PARENT).unwrap();
        assert_eq!(hex(&t.to_bytes()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s.to_bytes()), "00f067aa0ba902b7");
        assert!(sampled);
        let sampled_out = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(sampled_out).unwrap().2);
        // A later version may carry more fields.
        let later = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(parse_traceparent(later).is_some());
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Not ASCII: a character across the version's end must not be sliced.
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_bytes(),
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01".as_bytes(),
            b"0\xff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-abc-def-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_trusted_parent_is_continued_with_its_flag_and_others_start_a_new_trace() {
        let any = settings(0.0, ContinueFrom::Any);
        let t = Trace::begin(&any, Some(PARENT), Some(b"congo=t61rcWkgMzE"), false);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled, "the parent's flag decides, not the ratio of 0");
        assert_eq!(t.tracestate(), Some("congo=t61rcWkgMzE"));
        let header = t.traceparent(t.span_id);
        let header = header.to_str().unwrap();
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(header.ends_with("-01"));
        assert_ne!(&header[36..52], "00f067aa0ba902b7");

        let trusted_only = settings(0.0, ContinueFrom::TrustedProxies);
        let t = Trace::begin(&trusted_only, Some(PARENT), Some(b"congo=x"), false);
        assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!t.sampled, "an untrusted client cannot force recording");
        assert_eq!(t.tracestate(), None);
        let t = Trace::begin(&trusted_only, Some(PARENT), None, true);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

        let none = settings(1.0, ContinueFrom::None);
        let t = Trace::begin(&none, Some(PARENT), None, true);
        assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled, "ratio 1");
    }

    #[test]
    fn new_traces_are_sampled_by_ratio() {
        let half = settings(0.5, ContinueFrom::None);
        let sampled = (0..10_000)
            .filter(|_| Trace::begin(&half, None, None, false).sampled)
            .count();
        assert!((4_500..5_500).contains(&sampled), "{sampled}");
        let off = settings(0.0, ContinueFrom::None);
        assert!((0..1000).all(|_| !Trace::begin(&off, None, None, false).sampled));
    }

    #[test]
    fn without_an_exporter_sampled_spans_are_dropped_and_counted() {
        let before = METRICS.trace_spans.with_label_values(&["dropped"]).get();
        let mut t = Trace::begin(&settings(1.0, ContinueFrom::None), None, None, false);
        t.attempt_started("u", "127.0.0.1:1");
        t.finish(Finish {
            name: "GET r".into(),
            status: 200,
            attributes: vec![],
        });
        let after = METRICS.trace_spans.with_label_values(&["dropped"]).get();
        assert_eq!(after - before, 2, "the server span and the attempt");
    }
}
