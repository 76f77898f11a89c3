//! Fault injection: a raw-TCP HTTP/1.1 upstream whose behaviour is chosen per request, a
//! deterministic byte stream for large bodies, a `/proc` sampler, and the real gateway binary
//! started as a child process for the tests that measure it from outside.
//!
//! The fault upstream speaks just enough HTTP/1.1 by hand (Content-Length and chunked request
//! bodies, keep-alive) so that it can misbehave in ways a real server library refuses to:
//! reset after reading the request, stall mid-body, lie about Content-Length, send a broken
//! status line. It records every request it read, including the raw head bytes so that tests
//! can check the gateway's framing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest::{Context as Sha, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the fault upstream does with one request, after it has read the request head (and,
/// unless said otherwise, the whole body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with `body` (Content-Length framed), keep the connection.
    Ok { status: u16, body: Vec<u8> },
    /// Answer 200 with `len` bytes of [`pattern`]`(seed)`, streamed in 64 KiB writes.
    Stream { len: u64, seed: u64 },
    /// Wait, then answer like `Ok`.
    Delay {
        after: Duration,
        status: u16,
        body: Vec<u8>,
    },
    /// Write these bytes as the whole response, keep the connection.
    Raw(Vec<u8>),
    /// Answer like `ok()` as soon as the request head is read, then read the body and keep
    /// the connection: the response ends while the request body is still going out.
    OkBeforeBody,
    /// Answer like `ok()`, keep-alive and saying nothing of closing, then close the
    /// connection `after` this long: a pooled connection the upstream drops while it is idle.
    OkThenClose { after: Duration },
    /// Close the connection as soon as the request head is read, before the body and
    /// without answering.
    CloseOnAccept,
    /// Read the request, then reset the connection (SO_LINGER 0) without answering.
    ResetAfterRequest,
    /// Read the request and never answer; wait for the gateway to close the connection.
    Hang,
    /// Send a head with `Content-Length: declared`, then `sent` bytes, then stall forever.
    Stall { declared: usize, sent: usize },
    /// Send a head with `Content-Length: declared`, then `sent` bytes, then close.
    Truncate { declared: usize, sent: usize },
    /// Send a status line that is not HTTP, then close.
    BadStatusLine,
    /// Send a response head of about 1 MiB of headers.
    HugeHeaders,
    /// Read the request body at no more than `bytes_per_sec`, then answer like `ok()`.
    SlowRead { bytes_per_sec: u64 },
}

impl Fault {
    /// `200` with a small JSON body.
    pub fn ok() -> Fault {
        Fault::Ok {
            status: 200,
            body: br#"{"ok":true}"#.to_vec(),
        }
    }

    /// `status` with a small JSON body.
    pub fn status(status: u16) -> Fault {
        Fault::Ok {
            status,
            body: br#"{"error":{"code":"x"}}"#.to_vec(),
        }
    }
}

/// One request as the fault upstream read it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Header names and values in the order received (names as sent).
    pub headers: Vec<(String, String)>,
    /// The head exactly as it came off the wire, up to and including the blank line.
    pub raw_head: Vec<u8>,
    /// SHA-256 of the de-framed body bytes that arrived.
    pub body_sha256: [u8; 32],
    /// Body bytes that arrived.
    pub body_len: u64,
    /// Whether the body ended as its framing said (`false`: the connection broke first).
    pub body_complete: bool,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Policy = Arc<dyn Fn(&Received) -> Fault + Send + Sync>;

/// The raw-TCP fault upstream; stops when dropped.
pub struct FaultUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the connection tasks record.
#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// `x-request-id` values seen, for drivers that wait for one request to arrive.
    ids: Mutex<HashSet<String>>,
    arrived: Notify,
    accepted: AtomicUsize,
    closed_by_peer: AtomicUsize,
}

impl FaultUpstream {
    /// An upstream that does `fault` to every request.
    pub async fn fixed(fault: Fault) -> FaultUpstream {
        FaultUpstream::start(move |_| fault.clone()).await
    }

    /// An upstream that holds every request whose target starts with `prefix` (see
    /// [`Fault::Hang`]) and answers the others 200.
    pub async fn hanging(prefix: &'static str) -> FaultUpstream {
        FaultUpstream::start(move |r| {
            if r.target.starts_with(prefix) {
                Fault::Hang
            } else {
                Fault::ok()
            }
        })
        .await
    }

    /// An upstream that asks `policy` what to do with each request once its head is read
    /// (the body is not read yet when the policy runs; `body_*` fields are empty).
    pub async fn start(policy: impl Fn(&Received) -> Fault + Send + Sync + 'static) -> Self {
        FaultUpstream::start_on("127.0.0.1:0".parse().unwrap(), policy).await
    }

    /// [`FaultUpstream::start`] on a given address (an upstream coming back where it was).
    pub async fn start_on(
        addr: SocketAddr,
        policy: impl Fn(&Received) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let policy: Policy = Arc::new(policy);
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let tasks = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tasks.accepted.fetch_add(1, Ordering::SeqCst);
                // Heads and bodies go out in separate writes; no Nagle delay between them.
                let _ = stream.set_nodelay(true);
                let (policy, shared) = (Arc::clone(&policy), Arc::clone(&tasks));
                tokio::spawn(async move {
                    if serve(stream, policy, &shared).await == End::PeerClosed {
                        shared.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        FaultUpstream { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head was read so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until a request with header `x-request-id: id` was read.
    pub async fn wait_for_id(&self, id: &str) {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.shared.ids.lock().unwrap().contains(id) {
                return;
            }
            arrived.await;
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections that ended because the gateway closed them.
    pub fn closed_by_peer(&self) -> usize {
        self.shared.closed_by_peer.load(Ordering::SeqCst)
    }

    /// Waits up to 5 s until `n` request heads were read.
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.received.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nothing listens (bound, then closed): connecting is refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Whether a listener accepts on `addr`. While nothing listens there, a connect can still
/// succeed: when the kernel picks `addr`'s own port as the ephemeral source port (the ports
/// handed out above come from the same range), the socket connects to itself (TCP
/// simultaneous open). That is not a listener.
async fn listening(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(stream) => stream.local_addr().is_ok_and(|local| local != addr),
        Err(_) => false,
    }
}

/// A loopback address that drops SYNs: a listener with backlog 0 whose one-slot accept
/// queue is filled by a connection nobody accepts. Linux then drops further SYNs, so a
/// `connect()` hangs until the caller gives up, as with an upstream behind a black-hole route.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _filler: std::net::TcpStream,
}

impl BlackHole {
    /// Binds the listener and fills its accept queue; checks that a further connect hangs.
    pub async fn new() -> BlackHole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let filler = std::net::TcpStream::connect(addr).unwrap();
        let probe =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await;
        assert!(
            probe.is_err(),
            "the full accept queue must drop SYNs: {probe:?}"
        );
        BlackHole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(PartialEq, Eq)]
enum End {
    PeerClosed,
    Other,
}

const MAX_HEAD: usize = 64 * 1024;
/// Raw heads are kept; bodies only hashed, so 1 GiB uploads cost no memory.
const CHUNK: usize = 64 * 1024;

async fn serve(stream: TcpStream, policy: Policy, shared: &Shared) -> End {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request = match read_head(&mut stream).await {
            Ok(Some(request)) => request,
            Ok(None) => return End::PeerClosed,
            Err(_) => return End::Other,
        };
        let fault = policy(&request);
        let index = {
            let mut log = shared.received.lock().unwrap();
            log.push(request.clone());
            log.len() - 1
        };
        if let Some(id) = request.header("x-request-id") {
            shared.ids.lock().unwrap().insert(id.to_owned());
            shared.arrived.notify_waiters();
        }
        if fault == Fault::CloseOnAccept {
            return End::Other;
        }
        if fault == Fault::OkBeforeBody
            && respond(stream.get_mut(), 200, br#"{"ok":true}"#)
                .await
                .is_err()
        {
            return End::Other;
        }
        let framing = framing(&request);
        let pace = Pace {
            rate: match fault {
                Fault::SlowRead { bytes_per_sec } => Some(bytes_per_sec),
                _ => None,
            },
            start: tokio::time::Instant::now(),
        };
        let (sha, len, complete) = read_body(&mut stream, framing, &pace).await;
        request.body_sha256 = sha;
        request.body_len = len;
        request.body_complete = complete;
        shared.received.lock().unwrap()[index] = request;
        if !complete {
            return End::PeerClosed;
        }
        let socket = stream.get_mut();
        let result = match fault {
            Fault::Ok { status, body } => respond(socket, status, &body).await,
            Fault::SlowRead { .. } => respond(socket, 200, br#"{"ok":true}"#).await,
            Fault::Delay {
                after,
                status,
                body,
            } => {
                tokio::time::sleep(after).await;
                respond(socket, status, &body).await
            }
            Fault::Stream { len, seed } => stream_body(socket, len, seed).await,
            Fault::Raw(bytes) => socket.write_all(&bytes).await,
            Fault::OkBeforeBody => Ok(()),
            Fault::OkThenClose { after } => {
                let _ = respond(socket, 200, br#"{"ok":true}"#).await;
                tokio::time::sleep(after).await;
                return End::Other;
            }
            Fault::CloseOnAccept => unreachable!("handled before the body"),
            Fault::ResetAfterRequest => {
                let _ = socket.set_zero_linger();
                return End::Other;
            }
            Fault::Hang => return wait_for_close(socket).await,
            Fault::Stall { declared, sent } => {
                let _ = partial(socket, declared, sent).await;
                return wait_for_close(socket).await;
            }
            Fault::Truncate { declared, sent } => {
                let _ = partial(socket, declared, sent).await;
                return End::Other;
            }
            Fault::BadStatusLine => {
                let _ = socket.write_all(b"HTTP/1.1 2OO NOT OK\r\n\r\n").await;
                return End::Other;
            }
            Fault::HugeHeaders => {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..16 * 1024 {
                    head.extend_from_slice(format!("x-filler-{i}: {:0>48}\r\n", i).as_bytes());
                }
                head.extend_from_slice(b"content-length: 0\r\n\r\n");
                let _ = socket.write_all(&head).await;
                return End::Other;
            }
        };
        if result.is_err() {
            return End::Other;
        }
    }
}

async fn read_head(stream: &mut BufReader<TcpStream>) -> std::io::Result<Option<Received>> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = read_line(stream, &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(&line);
        if raw.len() > MAX_HEAD {
            return Err(std::io::Error::other("head too large"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let mut start = lines.next().unwrap_or("").split(' ');
    let method = start.next().unwrap_or("").to_owned();
    let target = start.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Received {
        method,
        target,
        headers,
        raw_head: raw,
        body_sha256: [0; 32],
        body_len: 0,
        body_complete: false,
    }))
}

async fn read_line(
    stream: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use tokio::io::AsyncBufReadExt;
    stream.read_until(b'\n', line).await
}

enum Framing {
    Length(u64),
    Chunked,
}

fn framing(request: &Received) -> Framing {
    if request
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        return Framing::Chunked;
    }
    Framing::Length(
        request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Reads and hashes the body; returns (sha, bytes, complete).
/// How fast a request body may be read: at most `rate` bytes per second since `start`.
struct Pace {
    rate: Option<u64>,
    start: tokio::time::Instant,
}

impl Pace {
    /// Sleeps until `read` bytes are within the rate.
    async fn wait(&self, read: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(read as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn read_body(
    stream: &mut BufReader<TcpStream>,
    framing: Framing,
    pace: &Pace,
) -> ([u8; 32], u64, bool) {
    let mut sha = Sha::new(&SHA256);
    let mut len = 0u64;
    let complete = match framing {
        Framing::Length(n) => read_exact_hashed(stream, n, &mut sha, &mut len, pace).await,
        Framing::Chunked => loop {
            let mut line = Vec::new();
            match read_line(stream, &mut line).await {
                Ok(n) if n > 0 => {}
                _ => break false,
            }
            let size = String::from_utf8_lossy(&line);
            let size = size.trim().split(';').next().unwrap_or("");
            let Ok(size) = u64::from_str_radix(size, 16) else {
                break false;
            };
            if size == 0 {
                // Trailers (none expected) end with a blank line.
                let mut end = Vec::new();
                break read_line(stream, &mut end).await.is_ok_and(|n| n > 0);
            }
            if !read_exact_hashed(stream, size, &mut sha, &mut len, pace).await {
                break false;
            }
            let mut crlf = Vec::new();
            if read_line(stream, &mut crlf).await.map_or(true, |n| n == 0) {
                break false;
            }
        },
    };
    let digest: [u8; 32] = sha.finish().as_ref().try_into().unwrap();
    (digest, len, complete)
}

async fn read_exact_hashed(
    stream: &mut BufReader<TcpStream>,
    mut n: u64,
    sha: &mut Sha,
    len: &mut u64,
    pace: &Pace,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    while n > 0 {
        let want = n.min(CHUNK as u64) as usize;
        match stream.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                sha.update(&buf[..got]);
                *len += got as u64;
                n -= got as u64;
                pace.wait(*len).await;
            }
        }
    }
    true
}

async fn respond(socket: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    socket.write_all(&response).await
}

async fn stream_body(socket: &mut TcpStream, len: u64, seed: u64) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
    socket.write_all(head.as_bytes()).await?;
    let mut pattern = Pattern::new(seed);
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        socket.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn partial(socket: &mut TcpStream, declared: usize, sent: usize) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {declared}\r\n\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&vec![b'x'; sent]).await?;
    socket.flush().await
}

/// Reads until the gateway closes the connection.
async fn wait_for_close(socket: &mut TcpStream) -> End {
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return End::PeerClosed,
            Ok(_) => {}
        }
    }
}

/// A seeded, cheap pseudo-random byte stream (xorshift64*), the same on both ends of a test.
pub struct Pattern(u64);

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// SHA-256 of `len` bytes of `Pattern::new(seed)` written in 64 KiB pieces (as the upstream
/// and the upload driver write it).
pub fn pattern_sha256(len: u64, seed: u64) -> [u8; 32] {
    let mut sha = Sha::new(&SHA256);
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    sha.finish().as_ref().try_into().unwrap()
}

/// SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .unwrap()
}

/// A sample of a process's resources from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub hwm_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/status`, `/proc/PID/fd` and `/proc/PID/stat`.
pub fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        fds,
        cpu_ticks: ticks(11) + ticks(12),
    }
}

/// The real `acsgate` binary as a child process on free loopback ports; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl GatewayProcess {
    /// Starts the binary in front of `upstream` with extra `ACSGATE_*` variables, and waits
    /// until its admin port answers.
    pub async fn start(upstream: &str, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_with_output(upstream, env, Stdio::null(), Stdio::null()).await
    }

    /// [`GatewayProcess::start`], with the child's stdout (the access log) and stderr (the
    /// diagnostic log) going where the test says.
    pub async fn start_with_output(
        upstream: &str,
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> GatewayProcess {
        let (proxy, admin) = (refused_addr(), refused_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_acsgate"));
        command
            .env("ACSGATE_UPSTREAM", upstream)
            .env("ACSGATE_LISTEN", proxy.to_string())
            .env("ACSGATE_ADMIN", admin.to_string())
            .env_remove("RUST_LOG")
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("acsgate binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(listening(admin).await && listening(proxy).await) {
            assert!(Instant::now() < deadline, "gateway did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        GatewayProcess {
            child,
            proxy,
            admin,
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// A `/proc` sample of the child.
    pub fn sample(&self) -> ProcSample {
        sample(self.pid())
    }

    /// Sends the child SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
    }
}

/// What came back on a raw client connection.
pub struct RawReply {
    /// Everything the gateway sent.
    pub bytes: Vec<u8>,
    /// Whether the gateway closed the connection (EOF or reset) within the wait.
    pub closed: bool,
}

impl RawReply {
    /// Status codes of every response head in the reply, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.1 ")
            .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Writes `bytes` on a fresh connection to `addr` and reads until the gateway closes it or
/// `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawReply {
                    bytes: reply,
                    closed: true,
                };
            }
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {
                return RawReply {
                    bytes: reply,
                    closed: false,
                };
            }
        }
    }
}

/// HTTP/1.1 and h2c clients with `TCP_NODELAY`, for load drivers (Nagle would add 40 ms
/// stalls between a request head and its body).
pub fn fast_clients() -> (
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
) {
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    use hyper_util::rt::TokioExecutor;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let h1 = Client::builder(TokioExecutor::new()).build(connector.clone());
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    (h1, h2)
}
