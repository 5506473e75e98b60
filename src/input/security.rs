//! The Forward protocol v1 handshake (`<security>`): HELO with a nonce and user-auth salt,
//! PING checked against the shared key (per client when `<client>` says so) and users,
//! PONG with the server's digest. Pure: messages in and out as bytes and values; the
//! connection does the I/O. Digests as fluentd's in_forward computes them (check_ping).

use crate::codec::msgpack::{Cursor, Head};
use crate::config::{ConfigError, Element, Section};
use sha2::{Digest, Sha512};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub password: String,
}

/// A `<client>`: which peers it matches and the key (and users) they must use.
#[derive(Debug, Clone)]
pub struct Client {
    matcher: ClientMatch,
    shared_key: Option<String>,
    users: Vec<String>,
}

#[derive(Debug, Clone)]
enum ClientMatch {
    Host(Vec<IpAddr>),
    Network(IpAddr, u8),
}

impl ClientMatch {
    fn matches(&self, addr: IpAddr) -> bool {
        match self {
            ClientMatch::Host(addrs) => addrs.contains(&addr),
            ClientMatch::Network(net, bits) => in_network(addr, *net, *bits),
        }
    }
}

fn in_network(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits.min(32)))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits.min(128)))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| in_network(IpAddr::V4(a), net, bits)),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct Security {
    pub self_hostname: String,
    pub shared_key: String,
    pub user_auth: bool,
    pub allow_anonymous_source: bool,
    pub users: Vec<User>,
    pub clients: Vec<Client>,
}

impl Security {
    pub fn from_config(element: &Element) -> Result<(Self, Vec<String>), ConfigError> {
        let s = Section::new(element);
        let need = |key: &str| {
            s.str(key)
                .map(str::to_owned)
                .ok_or_else(|| ConfigError::at(s.location(), format!("<security> needs '{key}'")))
        };
        let self_hostname = need("self_hostname")?;
        let shared_key = need("shared_key")?;
        let mut warnings = Vec::new();
        let mut users = Vec::new();
        for user in s.sections("user") {
            let u = Section::new(user);
            let field = |key: &str| {
                u.str(key)
                    .map(str::to_owned)
                    .ok_or_else(|| ConfigError::at(&user.location, format!("<user> needs '{key}'")))
            };
            users.push(User {
                username: field("username")?,
                password: field("password")?,
            });
            warnings.extend(u.finish(&[])?);
        }
        let mut clients = Vec::new();
        for client in s.sections("client") {
            let c = Section::new(client);
            let matcher = match (c.str("host"), c.str("network")) {
                (Some(host), None) => {
                    let addrs = resolve(host).map_err(|e| {
                        ConfigError::at(&client.location, format!("<client> host {host}: {e}"))
                    })?;
                    ClientMatch::Host(addrs)
                }
                (None, Some(network)) => {
                    let (net, bits) =
                        parse_network(network).map_err(|e| ConfigError::at(&client.location, e))?;
                    ClientMatch::Network(net, bits)
                }
                _ => {
                    return Err(ConfigError::at(
                        &client.location,
                        "<client> needs exactly one of 'host' and 'network'",
                    ));
                }
            };
            clients.push(Client {
                matcher,
                shared_key: c.str("shared_key").map(str::to_owned),
                users: c.array("users")?.unwrap_or_default(),
            });
            warnings.extend(c.finish(&[])?);
        }
        let security = Self {
            self_hostname,
            shared_key,
            user_auth: s.bool("user_auth")?.unwrap_or(false),
            allow_anonymous_source: s.bool("allow_anonymous_source")?.unwrap_or(true),
            users,
            clients,
        };
        warnings.extend(s.finish(&[])?);
        Ok((security, warnings))
    }

    fn client_for(&self, addr: Option<IpAddr>) -> Option<&Client> {
        let addr = addr?;
        self.clients.iter().find(|c| c.matcher.matches(addr))
    }
}

fn resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse() {
        return Ok(vec![ip]);
    }
    use std::net::ToSocketAddrs;
    Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, bits) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("<client> network '{text}' is not an address/prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() {
        max
    } else {
        bits.parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("<client> network '{text}' has a bad prefix length"))?
    };
    Ok((ip, bits))
}

pub fn sha512_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha512::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One connection's handshake state: the random values the HELO carried.
pub struct Handshake {
    pub nonce: [u8; 16],
    pub auth_salt: [u8; 16],
}

impl Handshake {
    pub fn new() -> Self {
        let mut nonce = [0u8; 16];
        let mut auth_salt = [0u8; 16];
        // An OS without a random source cannot run bqforward meaningfully; fall back to time
        // rather than panic, which still makes replay across connections unlikely.
        if getrandom::getrandom(&mut nonce).is_err()
            || getrandom::getrandom(&mut auth_salt).is_err()
        {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_be_bytes();
            nonce.copy_from_slice(&t);
            auth_salt.copy_from_slice(&t);
            auth_salt.reverse();
        }
        Self { nonce, auth_salt }
    }

    /// `["HELO", {"nonce": bin, "auth": bin or "", "keepalive": bool}]`.
    pub fn helo(&self, security: &Security, keepalive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let _ = rmp::encode::write_array_len(&mut out, 2);
        let _ = rmp::encode::write_str(&mut out, "HELO");
        let _ = rmp::encode::write_map_len(&mut out, 3);
        let _ = rmp::encode::write_str(&mut out, "nonce");
        let _ = rmp::encode::write_bin(&mut out, &self.nonce);
        let _ = rmp::encode::write_str(&mut out, "auth");
        if security.user_auth {
            let _ = rmp::encode::write_bin(&mut out, &self.auth_salt);
        } else {
            let _ = rmp::encode::write_str(&mut out, "");
        }
        let _ = rmp::encode::write_str(&mut out, "keepalive");
        let _ = rmp::encode::write_bool(&mut out, keepalive);
        out
    }

    /// Checks a PING; returns the PONG to send and whether the client may continue.
    pub fn answer(
        &self,
        security: &Security,
        ping: &[u8],
        peer: Option<IpAddr>,
    ) -> (Vec<u8>, Result<(), String>) {
        match self.check(security, ping, peer) {
            Ok((salt, key)) => {
                let digest = sha512_hex(&[
                    &salt,
                    security.self_hostname.as_bytes(),
                    &self.nonce,
                    key.as_bytes(),
                ]);
                (pong(true, "", &security.self_hostname, &digest), Ok(()))
            }
            Err(reason) => (pong(false, &reason, "", ""), Err(reason)),
        }
    }

    fn check(
        &self,
        security: &Security,
        ping: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<(Vec<u8>, String), String> {
        let fields = ping_fields(ping).ok_or("invalid ping message")?;
        let [hostname, salt, digest, username, password_digest] = fields;
        let client = security.client_for(peer);
        if client.is_none() && !security.allow_anonymous_source {
            let shown = peer
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into());
            return Err(format!("anonymous source host '{shown}' denied"));
        }
        let key = client
            .and_then(|c| c.shared_key.clone())
            .unwrap_or_else(|| security.shared_key.clone());
        let expected = sha512_hex(&[&salt, &hostname, &self.nonce, key.as_bytes()]);
        if digest != expected.as_bytes() {
            return Err("shared_key mismatch".into());
        }
        if security.user_auth {
            let allowed: Vec<&User> = match client.filter(|c| !c.users.is_empty()) {
                Some(c) => security
                    .users
                    .iter()
                    .filter(|u| c.users.contains(&u.username))
                    .collect(),
                None => security.users.iter().collect(),
            };
            let ok = allowed.iter().any(|user| {
                user.username.as_bytes() == username.as_slice()
                    && sha512_hex(&[&self.auth_salt, &username, user.password.as_bytes()])
                        .as_bytes()
                        == password_digest.as_slice()
            });
            if !ok {
                return Err("username/password mismatch".into());
            }
        }
        Ok((salt, key))
    }
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

/// `["PING", hostname, salt, digest, username, password_digest]` → the five byte strings.
fn ping_fields(ping: &[u8]) -> Option<[Vec<u8>; 5]> {
    let mut cur = Cursor::new(ping);
    if cur.head().ok()? != Head::Array(6) {
        return None;
    }
    let mut read = || -> Option<Vec<u8>> {
        match cur.head().ok()? {
            Head::Str(n) | Head::Bin(n) => {
                let range = cur.take(n as usize).ok()?;
                Some(cur.slice(range).to_vec())
            }
            _ => None,
        }
    };
    if read()? != b"PING" {
        return None;
    }
    Some([read()?, read()?, read()?, read()?, read()?])
}

fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let _ = rmp::encode::write_array_len(&mut out, 5);
    let _ = rmp::encode::write_str(&mut out, "PONG");
    let _ = rmp::encode::write_bool(&mut out, ok);
    let _ = rmp::encode::write_str(&mut out, reason);
    let _ = rmp::encode::write_str(&mut out, hostname);
    let _ = rmp::encode::write_str(&mut out, digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn security(user_auth: bool) -> Security {
        Security {
            self_hostname: "aggregator".into(),
            shared_key: "secret".into(),
            user_auth,
            allow_anonymous_source: true,
            users: vec![User {
                username: "alice".into(),
                password: "pw".into(),
            }],
            clients: Vec::new(),
        }
    }

    /// The HELO's `nonce` and `auth` values, read with a plain msgpack cursor.
    fn helo_values(helo: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut cur = Cursor::new(helo);
        assert_eq!(cur.head().unwrap(), Head::Array(2));
        cur.skip_value(8).unwrap();
        let Head::Map(n) = cur.head().unwrap() else {
            panic!("HELO option is not a map")
        };
        let mut found = std::collections::HashMap::new();
        for _ in 0..n {
            let key = match cur.head().unwrap() {
                Head::Str(len) => {
                    let r = cur.take(len as usize).unwrap();
                    String::from_utf8(cur.slice(r).to_vec()).unwrap()
                }
                other => panic!("key {other:?}"),
            };
            match cur.head().unwrap() {
                Head::Str(len) | Head::Bin(len) => {
                    let r = cur.take(len as usize).unwrap();
                    found.insert(key, cur.slice(r).to_vec());
                }
                _ => {}
            }
        }
        (found["nonce"].clone(), found["auth"].clone())
    }

    /// A PING computed independently with the spec's formula, as a client would.
    fn ping(helo: &[u8], key: &str, user: &str, password: &str) -> Vec<u8> {
        let (nonce, auth) = helo_values(helo);
        let salt = b"client-salt";
        let digest = sha512_hex(&[salt, b"web-1", &nonce, key.as_bytes()]);
        let pass = sha512_hex(&[&auth, user.as_bytes(), password.as_bytes()]);
        rmp_serde::to_vec(&("PING", "web-1", "client-salt", digest, user, pass)).unwrap()
    }

    fn pong_of(bytes: &[u8]) -> Value {
        rmp_serde::from_slice(bytes).unwrap()
    }

    #[test]
    fn right_key_gets_a_pong_with_the_servers_digest() {
        let sec = security(false);
        let hs = Handshake::new();
        let helo = hs.helo(&sec, true);
        let (pong, ok) = hs.answer(&sec, &ping(&helo, "secret", "", ""), None);
        assert!(ok.is_ok());
        let pong = pong_of(&pong);
        let expected = sha512_hex(&[b"client-salt", b"aggregator", &hs.nonce, b"secret"]);
        assert_eq!(
            pong,
            serde_json::json!(["PONG", true, "", "aggregator", expected])
        );
    }

    #[test]
    fn wrong_key_user_or_shape_is_refused_with_the_specs_reason() {
        let sec = security(true);
        let hs = Handshake::new();
        let helo = hs.helo(&sec, true);
        let cases = [
            (ping(&helo, "wrong", "alice", "pw"), "shared_key mismatch"),
            (
                ping(&helo, "secret", "alice", "bad"),
                "username/password mismatch",
            ),
            (
                ping(&helo, "secret", "mallory", "pw"),
                "username/password mismatch",
            ),
            (
                rmp_serde::to_vec(&("PING", "x")).unwrap(),
                "invalid ping message",
            ),
            (b"\xc1garbage".to_vec(), "invalid ping message"),
        ];
        for (ping, reason) in cases {
            let (pong, result) = hs.answer(&sec, &ping, None);
            assert_eq!(result, Err(reason.to_owned()));
            assert_eq!(
                pong_of(&pong),
                serde_json::json!(["PONG", false, reason, "", ""])
            );
        }
        let (_, ok) = hs.answer(&sec, &ping(&helo, "secret", "alice", "pw"), None);
        assert!(ok.is_ok());
    }

    #[test]
    fn clients_get_their_own_keys_and_anonymous_sources_can_be_denied() {
        let mut sec = security(false);
        sec.allow_anonymous_source = false;
        sec.clients.push(Client {
            matcher: ClientMatch::Network("10.1.0.0".parse().unwrap(), 16),
            shared_key: Some("edge-key".into()),
            users: Vec::new(),
        });
        let hs = Handshake::new();
        let helo = hs.helo(&sec, true);
        let inside = Some("10.1.2.3".parse().unwrap());
        let outside = Some("192.168.1.1".parse().unwrap());
        assert!(
            hs.answer(&sec, &ping(&helo, "edge-key", "", ""), inside)
                .1
                .is_ok()
        );
        assert_eq!(
            hs.answer(&sec, &ping(&helo, "secret", "", ""), inside).1,
            Err("shared_key mismatch".into())
        );
        assert_eq!(
            hs.answer(&sec, &ping(&helo, "edge-key", "", ""), outside).1,
            Err("anonymous source host '192.168.1.1' denied".into())
        );
    }

    #[test]
    fn networks_match_by_prefix() {
        let (net, bits) = parse_network("10.0.0.0/8").unwrap();
        assert!(in_network("10.200.1.1".parse().unwrap(), net, bits));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net, bits));
        assert!(in_network("::ffff:10.1.1.1".parse().unwrap(), net, bits));
        assert!(parse_network("10.0.0.0/33").is_err());
    }
}
