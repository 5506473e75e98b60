// Owns what the emulator checks of callers' credentials: the bearer tokens it has seen (so a
// test can follow a token from its source to BigQuery) and, when asked, which it accepts.
// Must not validate real Google tokens: it compares strings, nothing more.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// At most this many distinct tokens are remembered (the first ones seen).
const MAX_SEEN: usize = 1000;

/// Which tokens the API accepts. Both empty (the default): any request, with or without one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenPolicy {
    /// When not empty, only these bearer tokens are accepted; others are answered 401.
    pub require: Vec<String>,
    /// These bearer tokens are answered 401 (a revoked or expired token).
    pub refuse: Vec<String>,
}

#[derive(Default)]
struct State {
    policy: TokenPolicy,
    /// Distinct bearer tokens in the order first seen ("" for a request without one).
    seen: Vec<String>,
}

#[derive(Default)]
pub struct Tokens {
    state: Mutex<State>,
}

impl Tokens {
    pub fn new(policy: TokenPolicy) -> Self {
        Self {
            state: Mutex::new(State {
                policy,
                seen: Vec::new(),
            }),
        }
    }

    /// Records the request's `Authorization` header; `Err` with the reason when the policy
    /// refuses it.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        let token = authorization
            .map(|a| a.strip_prefix("Bearer ").unwrap_or(a).trim())
            .unwrap_or("");
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        if state.seen.len() < MAX_SEEN && !state.seen.iter().any(|t| t == token) {
            state.seen.push(token.to_owned());
        }
        if state.policy.refuse.iter().any(|t| t == token) {
            return Err("the access token was refused (revoked or expired)");
        }
        if !state.policy.require.is_empty() && !state.policy.require.iter().any(|t| t == token) {
            return Err("not an access token this emulator was told to accept");
        }
        Ok(())
    }

    pub fn set(&self, policy: TokenPolicy) {
        if let Ok(mut state) = self.state.lock() {
            state.policy = policy;
        }
    }

    /// The policy and the tokens seen, for `GET /_emulator/auth`.
    pub fn snapshot(&self) -> serde_json::Value {
        match self.state.lock() {
            Ok(state) => serde_json::json!({
                "require": state.policy.require,
                "refuse": state.policy.refuse,
                "seen": state.seen,
            }),
            Err(_) => serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_recorded_and_checked_against_the_policy() {
        let tokens = Tokens::new(TokenPolicy {
            require: vec!["good".into(), "old".into()],
            refuse: vec!["old".into()],
        });
        assert!(tokens.check(Some("Bearer good")).is_ok());
        assert!(tokens.check(Some("Bearer old")).is_err());
        assert!(tokens.check(Some("Bearer other")).is_err());
        assert!(tokens.check(None).is_err());
        assert!(tokens.check(Some("Bearer good")).is_ok());
        let seen = tokens.snapshot()["seen"].clone();
        assert_eq!(seen, serde_json::json!(["good", "old", "other", ""]));
        tokens.set(TokenPolicy::default());
        assert!(tokens.check(None).is_ok());
    }
}
