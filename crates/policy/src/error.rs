//! The crate's one error type: what can be wrong with a policy as written. Evaluation has no
//! errors; a claim that is missing or of the wrong type simply fails its condition.

use std::fmt;

/// Why a policy was refused. Messages are lowercase and name the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("expected enforce or shadow, found {0:?}")]
    UnknownMode(String),
    #[error("a rule needs at least one condition: roles, scopes, claims or methods")]
    EmptyRule,
    /// An empty list where at least one entry is needed; carries what the entries are
    /// (`role`, `scope`, `method`, `claim`, `value`).
    #[error("must list at least one {0}")]
    EmptyList(&'static str),
    #[error("give either any_of or all_of, not both")]
    BothAnyOfAndAllOf,
    #[error("needs any_of or all_of")]
    NeitherAnyOfNorAllOf,
    #[error("role names must not be empty")]
    EmptyRole,
    /// Scopes are echoed in `WWW-Authenticate`, so they must be RFC 6750 scope tokens.
    #[error(
        "invalid scope {0:?}: scopes are printable ascii without spaces, quotes or backslashes"
    )]
    InvalidScope(String),
    #[error("invalid method {0:?}: expected an http method such as GET")]
    InvalidMethod(String),
    #[error(
        "invalid claim path {0:?}, expected a dotted path such as tenant or realm_access.roles"
    )]
    InvalidClaimPath(String),
    #[error("expected a string, number or boolean, or a list of them")]
    InvalidClaimValue,
    #[error("claim listed twice in the same rule")]
    DuplicateClaim,
}

/// One problem in a policy, at a path relative to the policy such as `allow[1].roles`; the
/// config crate prefixes `policies.<name>.`. The path is empty for the policy as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub path: String,
    pub error: PolicyError,
}

impl PolicyProblem {
    pub(crate) fn new(path: impl Into<String>, error: PolicyError) -> Self {
        PolicyProblem {
            path: path.into(),
            error,
        }
    }
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.error)
        } else {
            write!(f, "{}: {}", self.path, self.error)
        }
    }
}

impl std::error::Error for PolicyProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
