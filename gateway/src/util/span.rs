//! The steps a traced request records as it is decided: kept on the request's own task (a
//! task-local), so that a step deep in the call tree (the one outbound call, a token check)
//! adds itself without being handed anything. Outside [`recording`] (a request that is not
//! traced, a background task) nothing is kept and [`active`] is false, so a step costs one
//! task-local lookup.

use std::cell::RefCell;
use std::future::Future;
use std::time::SystemTime;

/// One step of a request, a child of its server span.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: &'static str,
    /// A call to another server (OTLP `SPAN_KIND_CLIENT`), or work inside the gateway.
    pub client: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// The step failed (OTLP status `ERROR`).
    pub failed: bool,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

tokio::task_local! {
    static STEPS: RefCell<Vec<Step>>;
}

/// Whether the current task records steps: take timestamps only then.
pub fn active() -> bool {
    STEPS.try_with(|_| ()).is_ok()
}

/// Keeps `step` when the current task records steps.
pub fn record(step: Step) {
    let _ = STEPS.try_with(|s| s.borrow_mut().push(step));
}

/// Runs `f`, keeping the steps recorded while it runs.
pub async fn recording<F: Future>(f: F) -> (F::Output, Vec<Step>) {
    STEPS
        .scope(RefCell::new(Vec::new()), async {
            let out = f.await;
            (out, STEPS.with(|s| s.take()))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str) -> Step {
        let now = SystemTime::now();
        Step {
            name,
            client: false,
            start: now,
            end: now,
            attributes: vec![("a", 1.into())],
            failed: false,
        }
    }

    #[tokio::test]
    async fn steps_are_kept_only_inside_recording_and_only_for_their_own_task() {
        assert!(!active());
        record(step("lost"));
        let ((), steps) = recording(async {
            assert!(active());
            record(step("one"));
            // Another task records nothing into this request.
            tokio::spawn(async {
                assert!(!active());
                record(step("elsewhere"));
            })
            .await
            .unwrap();
            tokio::task::yield_now().await;
            record(step("two"));
        })
        .await;
        let names: Vec<_> = steps.iter().map(|s| s.name).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(!active());
    }
}
