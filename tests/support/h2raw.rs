//! Hand-written HTTP/2 frames over a plain TCP connection, for abuse the `h2` client refuses
//! to send: CONTINUATION floods, frames that force the server to reset streams,
//! connection-specific request headers. Header blocks use HPACK literals without indexing and
//! without Huffman coding (RFC 7541 §6.2.2), so no encoder state is needed.

use std::net::SocketAddr;
use std::time::Duration;

use h2::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One frame as read off the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY's (last stream id, reason).
    pub fn goaway(&self) -> Option<(u32, Reason)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            (
                word(&self.payload[..4]) & 0x7fff_ffff,
                word(&self.payload[4..8]).into(),
            )
        })
    }

    /// RST_STREAM's reason.
    pub fn reset(&self) -> Option<Reason> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| word(&self.payload).into())
    }

    /// The `:status` of a response HEADERS frame whose block starts with an indexed status
    /// from the static table (how the h2 crate encodes 200, 204, 206, 304, 400, 404, 500).
    pub fn status(&self) -> Option<u16> {
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        let first = *self.payload.first().filter(|_| self.kind == HEADERS)?;
        let index = first.checked_sub(0x88)? as usize;
        STATIC.get(index).copied()
    }
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A frame's bytes: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A WINDOW_UPDATE frame.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK header block of literal fields (never indexed, no Huffman).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            integer(&mut out, s.len(), 7);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); the prefix bits above start at 0.
fn integer(out: &mut Vec<u8>, mut value: usize, n: u32) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// The pseudo-header fields of an h2c `method` request for `path`, followed by `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "acs"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// A client connection that speaks raw frames. A reader task collects what the server sends.
pub struct RawH2 {
    write: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<Frame>,
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS, and acknowledges the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tcp.write_all(&hello).await.unwrap();
        let settings = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tcp))
            .await
            .expect("server SETTINGS within 5 s")
            .expect("server SETTINGS");
        assert_eq!(settings.kind, SETTINGS, "{settings:?}");
        tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        let (mut read, write) = tcp.into_split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(frame) = read_frame(&mut read).await {
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        RawH2 { write, frames }
    }

    /// Writes bytes; an error means the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// The next frame the server sent, or `None` on close or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.frames.recv()).await.ok()?
    }

    /// Every frame until the server closes the connection, and whether it did within `wait`.
    pub async fn until_closed(&mut self, wait: Duration) -> (Vec<Frame>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, true),
                Err(_) => return (frames, false),
            }
        }
    }
}

async fn read_frame(read: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: word(&head[5..9]) & 0x7fff_ffff,
        payload,
    })
}
