//! The floor of any hyper-based proxy, for `bench/run.sh`: an HTTP/1.1 server that forwards
//! each request over one upstream HTTP/1.1 connection of its own (made on the connection's
//! first request) and streams the answer back. No catalogue, no metrics, no header rules, no
//! timeouts, no pool: what is left is hyper's server and client and tokio, on one thread,
//! with acsgate's allocator and HTTP/1 write strategy (`writev(false)`). Its CPU per request
//! is what acsgate cannot go below while it is built on hyper; the difference to acsgate is
//! what acsgate's own layers cost.
//!
//! `cargo run --release --example hyper_floor -- LISTEN UPSTREAM` (both `host:port`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[path = "../src/allocator.rs"]
mod allocator;

#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

type Sender = client::SendRequest<Incoming>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    allocator::tune();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN UPSTREAM (host:port each)".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let host = HeaderValue::from_str(&upstream.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(listen, upstream, host))
}

async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    host: HeaderValue,
) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let host = host.clone();
        // One upstream connection per client connection: no pool, no lock shared between them.
        let sender: Rc<Mutex<Option<Sender>>> = Rc::new(Mutex::new(None));
        let service = service_fn(move |request: Request<Incoming>| {
            let (sender, host) = (Rc::clone(&sender), host.clone());
            async move { Ok::<_, Infallible>(forward(request, upstream, host, &sender).await) }
        });
        tokio::task::spawn_local(async move {
            let _ = server::Builder::new()
                .writev(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    mut request: Request<Incoming>,
    upstream: SocketAddr,
    host: HeaderValue,
    sender: &Mutex<Option<Sender>>,
) -> Response<http_body_util::Either<Incoming, String>> {
    let bad_gateway = |error: BoxError| {
        let mut response = Response::new(http_body_util::Either::Right(error.to_string()));
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
        response
    };
    let mut sender = sender.lock().await;
    if sender.as_ref().is_none_or(Sender::is_closed) {
        match connect(upstream).await {
            Ok(fresh) => *sender = Some(fresh),
            Err(error) => return bad_gateway(error),
        }
    }
    let Some(sender) = sender.as_mut() else {
        return bad_gateway("no upstream connection".into());
    };
    // The previous response's body may still be finishing on the connection's task.
    if let Err(error) = sender.ready().await {
        return bad_gateway(error.into());
    }
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = Uri::from(path);
    }
    request.headers_mut().insert(http::header::HOST, host);
    match sender.send_request(request).await {
        Ok(response) => response.map(http_body_util::Either::Left),
        Err(error) => bad_gateway(error.into()),
    }
}

async fn connect(upstream: SocketAddr) -> Result<Sender, BoxError> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = client::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
