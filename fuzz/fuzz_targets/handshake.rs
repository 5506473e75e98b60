//! The server side of the `<security>` handshake on an arbitrary PING: refused or accepted,
//! never a panic.
#![no_main]

include!("common.rs");

#[allow(dead_code)]
#[path = "../../src/input/security.rs"]
mod security;

use libfuzzer_sys::fuzz_target;
use security::{Handshake, Security, User};

fuzz_target!(|data: &[u8]| {
    let security = Security {
        self_hostname: "fuzz".into(),
        shared_key: "key".into(),
        user_auth: true,
        allow_anonymous_source: true,
        users: vec![User {
            username: "u".into(),
            password: "p".into(),
        }],
        clients: Vec::new(),
    };
    let handshake = Handshake::new();
    let _ = handshake.helo(&security, true);
    let (pong, _) = handshake.answer(&security, data, None);
    assert!(!pong.is_empty());
});
