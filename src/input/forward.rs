//! `@type forward` and `@type unix`: listeners, connections and acks. Reads bytes, hands them
//! to the codec, sends events to the router's outputs one batch per read, and acks a chunk
//! only after every output it went to has accepted it. The UDP heartbeat lives here too.

use super::security::{Handshake, Security};
use crate::codec::{self, DecodeError, DecodeOptions, Decoder, Message};
use crate::config::{ConfigError, Section};
use crate::event::Batch;
use crate::metrics::InputMetrics;
use crate::ratelimit::RateLimit;
use crate::router::{Plan, Router};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Without `chunk_size_limit`, no single message may exceed this (fluentd has no bound; an
/// unbounded buffer would let one peer exhaust memory). Fits fluentd's 8 MiB chunks with room.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// The most a connection reserves ahead for a message it is reading.
const MAX_RESERVE: usize = 1024 * 1024;
/// Room past the end a message's heads announce: its option map, and the first bytes of the
/// next message.
const MESSAGE_TAIL: usize = 1024;
const MAX_CACHED_TAGS: usize = 1024;
/// Time allowed for a TLS handshake and for the PING of the `<security>` handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The same warning about one peer's input (same peer address, same text up to numbers) is
/// logged at most once per interval; the decode-error counters keep the exact count.
static BAD_INPUT_WARNINGS: LazyLock<RateLimit> =
    LazyLock::new(|| RateLimit::new(Duration::from_secs(10)));

#[derive(Debug, Clone)]
pub enum Listen {
    Tcp { bind: String, port: u16 },
    Unix { path: PathBuf },
}

/// The TLS acceptor, if `<transport tls>` is configured.
#[derive(Clone)]
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub id: String,
    /// `@label`: events start in this label instead of the root.
    pub label: Option<String>,
    pub listen: Listen,
    pub max_message_size: usize,
    pub chunk_size_warn_limit: Option<usize>,
    pub decode: DecodeOptions,
    pub tag: Option<String>,
    pub add_tag_prefix: Option<String>,
    pub source_address_key: Option<String>,
    pub source_hostname_key: Option<String>,
    pub resolve_hostname: bool,
    pub deny_keepalive: bool,
    pub tls: Option<Tls>,
    pub security: Option<Arc<Security>>,
    /// bqforward's own limits (fluentd has none): connections at once, and how long a
    /// connection may stay silent.
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<Duration>,
}

/// in_forward parameters bqforward accepts and does not act on.
const FORWARD_IGNORED: &[&str] = &[
    "linger_timeout",
    "backlog",
    "send_keepalive_packet",
    "blocking_timeout",
];

impl ForwardConfig {
    pub fn from_config(
        id: String,
        s: &Section<'_>,
        unix: bool,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let tls = match s.section("transport")? {
            Some(transport) if unix => {
                return Err(ConfigError::at(
                    &transport.location,
                    "<transport> applies to TCP, not to a Unix socket",
                ));
            }
            Some(transport) => {
                let (acceptor, w) = super::tls::from_config(transport)?;
                warnings.extend(w);
                acceptor.map(Tls)
            }
            None => None,
        };
        let security = match s.section("security")? {
            Some(section) => {
                let (security, w) = Security::from_config(section)?;
                warnings.extend(w);
                Some(Arc::new(security))
            }
            None => None,
        };
        let listen = if unix {
            Listen::Unix {
                path: PathBuf::from(s.string("path", "/var/run/fluent/fluent.sock")),
            }
        } else {
            Listen::Tcp {
                bind: s.string("bind", "0.0.0.0"),
                port: s.int("port")?.unwrap_or(24224),
            }
        };
        let to_usize = |v: Option<u64>| v.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let decode = DecodeOptions {
            skip_invalid_event: s.bool("skip_invalid_event")?.unwrap_or(true),
            decompression_size_limit: to_usize(s.size("decompression_size_limit")?)
                .unwrap_or(256 * 1024 * 1024),
            ..DecodeOptions::default()
        };
        let config = Self {
            id,
            label: None,
            listen,
            max_message_size: to_usize(s.size("chunk_size_limit")?).unwrap_or(DEFAULT_MAX_MESSAGE),
            chunk_size_warn_limit: to_usize(s.size("chunk_size_warn_limit")?),
            decode,
            tag: s.str("tag").map(str::to_owned),
            add_tag_prefix: s.str("add_tag_prefix").map(str::to_owned),
            source_address_key: s.str("source_address_key").map(str::to_owned),
            source_hostname_key: s.str("source_hostname_key").map(str::to_owned),
            resolve_hostname: s.bool("resolve_hostname")?.unwrap_or(false),
            deny_keepalive: s.bool("deny_keepalive")?.unwrap_or(false),
            tls,
            security,
            max_connections: s.int::<usize>("max_connections")?.filter(|n| *n > 0),
            idle_timeout: s.time("idle_timeout")?.filter(|d| !d.is_zero()),
        };
        warnings.extend(s.finish(FORWARD_IGNORED)?);
        Ok((config, warnings))
    }

    pub fn describe(&self) -> String {
        match &self.listen {
            Listen::Tcp { bind, port } => {
                let transport = if self.tls.is_some() { "tls" } else { "tcp" };
                let auth = if self.security.is_some() {
                    ", shared-key handshake"
                } else {
                    ""
                };
                format!("forward {transport}+udp {bind}:{port}{auth}")
            }
            Listen::Unix { path } => format!("unix {}", path.display()),
        }
    }
}

enum Listener {
    Tcp(TcpListener, UdpSocket),
    Unix(UnixListener, PathBuf),
}

/// A forward input with its sockets bound (so a busy port fails start-up, not later).
pub struct ForwardInput {
    config: Arc<ForwardConfig>,
    listener: Listener,
    metrics: InputMetrics,
}

impl ForwardInput {
    pub async fn bind(config: ForwardConfig, metrics: InputMetrics) -> std::io::Result<Self> {
        let listener = match &config.listen {
            Listen::Tcp { bind, port } => {
                let tcp = TcpListener::bind((bind.as_str(), *port)).await?;
                // The heartbeat socket shares the TCP port number (also when port 0 picked it).
                let udp = UdpSocket::bind(tcp.local_addr()?).await?;
                Listener::Tcp(tcp, udp)
            }
            Listen::Unix { path } => {
                // A socket file left by a previous run would make bind fail, as fluentd handles.
                if std::fs::symlink_metadata(path).is_ok() {
                    std::fs::remove_file(path)?;
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Listener::Unix(UnixListener::bind(path)?, path.clone())
            }
        };
        Ok(Self {
            config: Arc::new(config),
            listener,
            metrics,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(tcp, _) => tcp.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts until `shutdown`, then waits for open connections to finish the data they
    /// have already read (they stop reading at once).
    pub async fn serve(self, router: Arc<Router>, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        let config = self.config;
        let limit = config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        let metrics = self.metrics;
        let (listener, heartbeat) = match self.listener {
            Listener::Tcp(tcp, udp) => (
                Accept::Tcp(tcp),
                Some(tokio::spawn(heartbeat(udp, shutdown.clone()))),
            ),
            Listener::Unix(unix, path) => (Accept::Unix(unix, Arc::new(path)), None),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        let Some(permit) = admit(&config, limit.as_ref(), &stream.label()) else {
                            continue;
                        };
                        let (config, router, shutdown, metrics) = (Arc::clone(&config), Arc::clone(&router), shutdown.clone(), metrics.clone());
                        connections.spawn(async move {
                            let _permit = permit;
                            stream.serve(&config, &router, &shutdown, &metrics).await;
                        });
                    }
                    Err(err) => accept_error(&config, err).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
        }
        if let Accept::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path.as_path());
        }
        while connections.join_next().await.is_some() {}
    }
}

/// Where connections come from: one accept loop serves both.
enum Accept {
    Tcp(TcpListener),
    Unix(UnixListener, Arc<PathBuf>),
}

/// A connection just accepted, before its peer is known.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream, Arc<PathBuf>),
}

impl Accept {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Accept::Tcp(tcp) => {
                let (stream, addr) = tcp.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream, addr))
            }
            Accept::Unix(unix, path) => {
                let (stream, _) = unix.accept().await?;
                Ok(Accepted::Unix(stream, Arc::clone(path)))
            }
        }
    }
}

impl Accepted {
    /// The peer as `max_connections` refusals name it.
    fn label(&self) -> String {
        match self {
            Accepted::Tcp(_, addr) => addr.to_string(),
            Accepted::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    async fn serve(
        self,
        config: &Arc<ForwardConfig>,
        router: &Arc<Router>,
        shutdown: &CancellationToken,
        metrics: &InputMetrics,
    ) {
        match self {
            Accepted::Tcp(stream, addr) => {
                let peer = Peer::tcp(addr, config).await;
                let connection = Connection::new(config, router, peer, shutdown, metrics);
                match &config.tls {
                    Some(Tls(acceptor)) => connection.run_tls(acceptor, stream).await,
                    None => connection.run(stream).await,
                }
            }
            Accepted::Unix(stream, path) => {
                let peer = Peer::unix(&path);
                Connection::new(config, router, peer, shutdown, metrics)
                    .run(stream)
                    .await;
            }
        }
    }
}

/// A place under `max_connections`, or `None` (the new connection is closed at once).
fn admit(
    config: &ForwardConfig,
    limit: Option<&Arc<Semaphore>>,
    peer: &str,
) -> Option<Option<OwnedSemaphorePermit>> {
    let Some(limit) = limit else {
        return Some(None);
    };
    match Arc::clone(limit).try_acquire_owned() {
        Ok(permit) => Some(Some(permit)),
        Err(_) => {
            tracing::warn!(input = %config.id, peer, max_connections = ?config.max_connections,
                "too many connections; refusing this one");
            None
        }
    }
}

/// Reads more bytes; an idle connection past `idle` counts as closed by the peer.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    idle: Option<Duration>,
) -> std::io::Result<usize> {
    match idle {
        None => reader.read_buf(buf).await,
        Some(idle) => match tokio::time::timeout(idle, reader.read_buf(buf)).await {
            Ok(read) => read,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "idle_timeout reached",
            )),
        },
    }
}

/// Accept errors (e.g. out of file descriptors) must not spin the loop.
async fn accept_error(config: &ForwardConfig, err: std::io::Error) {
    tracing::error!(input = %config.id, error = %err, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// fluentd's out_forward `heartbeat_type udp` sends a datagram and expects one back.
async fn heartbeat(socket: UdpSocket, shutdown: CancellationToken) {
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => {
                if let Ok((_, from)) = received {
                    let _ = socket.send_to(b"\0", from).await;
                }
            }
        }
    }
}

/// Who is on the other end, for logs and `source_*_key`.
struct Peer {
    label: String,
    /// What repeated warnings are limited by: the address without the port, so a client
    /// that reconnects in a loop is still one peer.
    warn_key: String,
    address: String,
    hostname: String,
    ip: Option<std::net::IpAddr>,
}

impl Peer {
    async fn tcp(addr: SocketAddr, config: &ForwardConfig) -> Self {
        let address = addr.ip().to_string();
        let hostname = if config.source_hostname_key.is_some() && config.resolve_hostname {
            let ip = addr.ip();
            tokio::task::spawn_blocking(move || dns_lookup::lookup_addr(&ip).ok())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| address.clone())
        } else {
            address.clone()
        };
        Self {
            label: addr.to_string(),
            warn_key: address.clone(),
            address,
            hostname,
            ip: Some(addr.ip()),
        }
    }

    fn unix(path: &std::path::Path) -> Self {
        let label = format!("unix:{}", path.display());
        Self {
            address: label.clone(),
            warn_key: label.clone(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            label,
            ip: None,
        }
    }
}

/// The tag as routed: after `tag` / `add_tag_prefix`, and its plan (filters and route).
#[derive(Clone)]
struct RoutedTag {
    tag: Arc<str>,
    plan: Arc<Plan>,
    /// `fluentd_input_status_num_records_total` for this tag.
    records: prometheus::IntCounter,
}

struct Connection {
    config: Arc<ForwardConfig>,
    router: Arc<Router>,
    peer: Peer,
    shutdown: CancellationToken,
    tags: HashMap<Bytes, RoutedTag>,
    metrics: InputMetrics,
    /// The label events start in: the root, or the source's `@label`.
    label: usize,
}

/// What one read produced: batches per route in arrival order, and the acks they earn.
#[derive(Default)]
struct Pending {
    batches: Vec<(RoutedTag, Batch)>,
    acks: Vec<u8>,
    ack_count: usize,
}

impl Connection {
    fn new(
        config: &Arc<ForwardConfig>,
        router: &Arc<Router>,
        peer: Peer,
        shutdown: &CancellationToken,
        metrics: &InputMetrics,
    ) -> Self {
        Self {
            config: Arc::clone(config),
            router: Arc::clone(router),
            peer,
            shutdown: shutdown.clone(),
            tags: HashMap::new(),
            metrics: metrics.clone(),
            label: config
                .label
                .as_deref()
                .and_then(|l| router.label_index(l))
                .unwrap_or(0),
        }
    }

    async fn run_tls(self, acceptor: &tokio_rustls::TlsAcceptor, stream: tokio::net::TcpStream) {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.run(tls).await,
            Ok(Err(err)) => {
                tracing::warn!(peer = %self.peer.label, error = %err, "TLS handshake failed");
            }
            Err(_) => tracing::warn!(peer = %self.peer.label, "TLS handshake timed out"),
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, stream: S) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut decoder = Decoder::new(self.config.max_message_size, self.config.decode.max_depth);
        let _open = self.metrics.connection();
        tracing::debug!(peer = %self.peer.label, "connection opened");
        if let Some(security) = self.config.security.clone() {
            let io = (&mut reader, &mut writer, &mut buf, &mut decoder);
            if !self.authenticate(&security, io).await {
                let _ = writer.shutdown().await;
                return;
            }
        }
        let mut last_message = 0;
        loop {
            // Room for the rest of a message being read, up to MAX_RESERVE at once: a large
            // PackedForward message then costs one allocation, not a copy per doubling. A
            // peer that only declares a large message gets no more than that. Before its size
            // is known, room for one the size of the last: a buffer then ends about where
            // its message does, instead of holding the start of the next, which had to be
            // copied to a buffer of its own (half of each 130 KB message in the benchmark).
            let want = match decoder.still_needed(buf.len()) {
                0 => (last_message + MESSAGE_TAIL).max(READ_CHUNK),
                rest => rest + MESSAGE_TAIL,
            };
            buf.reserve(want.min(MAX_RESERVE));
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                read = read_some(&mut reader, &mut buf, self.config.idle_timeout) => read,
            };
            match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::warn!(peer = %self.peer.label, bytes = buf.len(),
                            "connection closed in the middle of a message; it was not acked");
                    }
                    break;
                }
                Ok(n) => self.metrics.read(n),
                Err(err) => {
                    tracing::warn!(peer = %self.peer.label, error = %err, "read failed");
                    break;
                }
            }
            let mut pending = Pending::default();
            let fatal = loop {
                match decoder.next_frame(&mut buf) {
                    Ok(Some(frame)) => {
                        last_message = frame.len();
                        if let Err(err) = self.accept_frame(&frame, &mut pending) {
                            break Some(err);
                        }
                    }
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                }
            };
            if !self.deliver(pending, &mut writer).await {
                break;
            }
            if let Some(err) = fatal {
                self.metrics.decode_error(err.kind(), 1);
                if let Some(suppressed) = self.may_warn(&err) {
                    tracing::warn!(peer = %self.peer.label, input = %self.config.id, error = %err,
                        suppressed, "bad input, closing the connection");
                }
                break;
            }
            if self.config.deny_keepalive && buf.is_empty() {
                break;
            }
        }
        let _ = writer.shutdown().await;
        tracing::debug!(peer = %self.peer.label, "connection closed");
    }

    /// The `<security>` handshake: HELO, then the PING within the handshake timeout, then PONG.
    async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        security: &Security,
        (reader, writer, buf, decoder): (&mut R, &mut W, &mut BytesMut, &mut Decoder),
    ) -> bool {
        let handshake = Handshake::new();
        if writer
            .write_all(&handshake.helo(security, !self.config.deny_keepalive))
            .await
            .is_err()
        {
            return false;
        }
        let ping = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match decoder.next_frame(buf) {
                    Ok(Some(frame)) => return Some(frame),
                    Ok(None) => {}
                    Err(_) => return None,
                }
                buf.reserve(1024);
                match reader.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let ping = match ping {
            Ok(Some(ping)) => ping,
            Ok(None) => Bytes::new(),
            Err(_) => {
                tracing::warn!(peer = %self.peer.label, "no PING within the handshake timeout");
                return false;
            }
        };
        let (pong, result) = handshake.answer(security, &ping, self.peer.ip);
        let _ = writer.write_all(&pong).await;
        match result {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(peer = %self.peer.label, input = %self.config.id, %reason, "authentication failed");
                false
            }
        }
    }

    /// Decodes one message into `pending`. An error means the stream can't be trusted.
    fn accept_frame(&mut self, frame: &Bytes, pending: &mut Pending) -> Result<(), DecodeError> {
        if let Some(limit) = self
            .config
            .chunk_size_warn_limit
            .filter(|l| frame.len() > *l)
            && let Some(suppressed) = self.may_warn(&"chunk_size_warn_limit")
        {
            tracing::warn!(peer = %self.peer.label, size = frame.len(), limit, suppressed,
                "message is larger than chunk_size_warn_limit");
        }
        let Some(msg) = codec::decode_message(frame, &self.config.decode)? else {
            return Ok(());
        };
        self.report_oddities(&msg);
        let routed = self.routed_tag(&msg);
        let events = self.with_source_fields(msg.events);
        match pending.batches.last_mut() {
            Some((_, batch)) if Arc::ptr_eq(&batch.tag, &routed.tag) => batch.events.extend(events),
            _ => {
                let tag = Arc::clone(&routed.tag);
                pending.batches.push((routed, Batch { tag, events }));
            }
        }
        if let Some(chunk) = &msg.chunk {
            codec::forward::write_ack(&mut pending.acks, chunk);
            pending.ack_count += 1;
        }
        Ok(())
    }

    fn report_oddities(&self, msg: &Message) {
        if let Some(reason) = msg.first_skip {
            self.metrics
                .decode_error(reason.kind(), u64::from(msg.skipped));
            if let Some(suppressed) = self.may_warn(&reason) {
                tracing::warn!(peer = %self.peer.label, tag = msg.tag_str(), skipped = msg.skipped,
                    reason = %reason, suppressed, "got invalid event and drop it");
            }
        }
        if let Some((declared, found)) = msg.size_mismatch
            && let Some(suppressed) = self.may_warn(&"size option mismatch")
        {
            tracing::warn!(peer = %self.peer.label, tag = msg.tag_str(), declared, found,
                suppressed, "the 'size' option does not match the events in the message");
        }
    }

    /// `Some(suppressed since the last one)` if a warning about `what` from this peer may be
    /// logged now. Numbers (offsets, sizes) are left out of the key so a flood of one fault
    /// counts as one warning.
    fn may_warn(&self, what: &dyn std::fmt::Display) -> Option<u64> {
        let text: String = what
            .to_string()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        BAD_INPUT_WARNINGS.check(&format!("{} {text}", self.peer.warn_key))
    }

    fn routed_tag(&mut self, msg: &Message) -> RoutedTag {
        if let Some(routed) = self.tags.get(&msg.tag) {
            return routed.clone();
        }
        let mut tag = match &self.config.tag {
            Some(fixed) => fixed.clone(),
            None => msg.tag_str().to_owned(),
        };
        if let Some(prefix) = &self.config.add_tag_prefix {
            tag = format!("{prefix}.{tag}");
        }
        let routed = RoutedTag {
            plan: self.router.plan(self.label, &tag),
            records: self.metrics.records(&tag),
            tag: Arc::from(tag),
        };
        if self.tags.len() >= MAX_CACHED_TAGS {
            self.tags.clear();
        }
        self.tags.insert(msg.tag.clone(), routed.clone());
        routed
    }

    fn with_source_fields(&self, mut events: Vec<crate::event::Event>) -> Vec<crate::event::Event> {
        let fields = [
            (&self.config.source_address_key, &self.peer.address),
            (&self.config.source_hostname_key, &self.peer.hostname),
        ];
        for (key, value) in fields {
            let Some(key) = key else { continue };
            for event in &mut events {
                // Records were checked to be maps when decoded, so this cannot fail.
                if let Ok(record) = codec::set_field(&event.record, key, value) {
                    event.record = record;
                }
            }
        }
        events
    }

    /// Hands batches to their outputs in order, then writes the acks. `false` when the
    /// connection must close (an output refused, or the peer went away).
    async fn deliver<W: AsyncWrite + Unpin>(&self, pending: Pending, writer: &mut W) -> bool {
        let events: usize = pending.batches.iter().map(|(_, b)| b.events.len()).sum();
        self.metrics.received(events);
        for (routed, batch) in pending.batches {
            routed.records.inc_by(batch.events.len() as u64);
            if let Err(err) = self.router.dispatch(&routed.plan, batch).await {
                tracing::error!(peer = %self.peer.label, error = %err,
                    "output did not accept events; closing the connection without ack");
                return false;
            }
        }
        if pending.acks.is_empty() {
            return true;
        }
        match writer.write_all(&pending.acks).await {
            Ok(()) => {
                self.metrics.acked(pending.ack_count);
                true
            }
            Err(err) => {
                tracing::warn!(peer = %self.peer.label, error = %err, "could not send ack");
                false
            }
        }
    }
}
